"""ONNX export (needs torch) and torch-free ONNX serving.

Imports are lazy: ``from export import OnnxClassifier`` loads PIL, numpy, onnx and the
serving runtime (onnxruntime or OpenVINO) only; the exporters (``export.vit_onnx``,
``export.vit_export``, ``export.seq2seq_onnx``) and the PyTorch translator back end are the
only parts that import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OnnxClassifier": "onnx_classifier",
    "Prediction": "onnx_classifier",
    "ModelInfo": "onnx_classifier",
    "open_backend": "backends",
    "run_gate": "gate",
    "write_gate": "gate",
    "ModelMetadata": "metadata",
    "read_metadata": "metadata",
    "ImageLoadError": "images",
    "load_image": "images",
    "find_images": "images",
    "Translation": "translator",
    "Translator": "translator",
    "load_translator": "translate",
    "OnnxTranslator": "onnx_translator",
    "export_checkpoint": "vit_export",
    "ExportOptions": "vit_export",
    "export_seq2seq": "seq2seq_onnx",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
