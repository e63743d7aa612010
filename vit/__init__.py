"""Vision Transformer and text Transformer on one attention core.

Imports are lazy so that the torch-free parts (``vit.preprocess``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiHeadAttention": "attention",
    "KVCache": "attention",
    "padding_mask": "attention",
    "causal_mask": "attention",
    "ViT": "vit",
    "ViTConfig": "vit",
    "Seq2Seq": "seq2seq",
    "Seq2SeqConfig": "seq2seq",
    "load_vit": "checkpoint",
    "Preprocess": "preprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
