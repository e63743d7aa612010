"""ONNX export (needs torch) and torch-free ONNX serving.

Imports are lazy: ``from export import OnnxClassifier`` loads onnxruntime, PIL and numpy
only; the exporter (``export.onnx_export``, ``export.cli``) is the only part that imports
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OnnxClassifier": "classifier",
    "Prediction": "classifier",
    "ModelInfo": "classifier",
    "ModelMetadata": "metadata",
    "read_metadata": "metadata",
    "ImageLoadError": "images",
    "load_image": "images",
    "find_images": "images",
    "export_checkpoint": "cli",
    "ExportOptions": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
