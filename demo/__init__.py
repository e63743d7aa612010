"""Gradio demo: classify an image and show where the model looked (``vit-demo``).

Nothing happens at import time; :func:`demo.app.main` builds and launches the app.
"""
