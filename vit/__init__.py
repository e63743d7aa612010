"""Vision Transformer and text Transformer on one attention core.

Imports are lazy so that the torch-free parts (``vit.preprocess``, ``vit.rollout``,
``vit.text_codec``, ``vit.decoding``, ``vit.image_folder``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiHeadAttention": "attention",
    "KVCache": "attention",
    "padding_mask": "attention",
    "causal_mask": "attention",
    "configure_attention": "attention",
    "Block": "layers",
    "ViT": "vit",
    "ViTConfig": "vit",
    "Seq2Seq": "seq2seq",
    "Seq2SeqConfig": "seq2seq",
    "greedy_decode": "decoding",
    "beam_search": "decoding",
    "TextCodec": "text_codec",
    "DecodingRules": "text_codec",
    "load_vit": "checkpoint",
    "save_vit": "checkpoint",
    "load_seq2seq": "checkpoint",
    "save_seq2seq": "checkpoint",
    "vit_from_timm": "timm_weights",
    "Preprocess": "preprocess",
    "ConfigError": "errors",
    "DataError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
