"""Teachers for distillation (#16): the files ``model.distill.teacher`` names, read here.

A teacher is either the small CNN of :mod:`training.cnn` (written by
``benchmarks/cnn_baseline.py --output``: safetensors with a ``cnn`` record next to the
weights, shaped as the ``vit`` record of :mod:`vit.checkpoint`) or any classifier this
project reads (a ``vit-train`` checkpoint, a ViT ``.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vit.checkpoint import load_vit, read_checkpoint, write_safetensors

from .cnn import CNNConfig, SmallCNN

CNN_KEY = "cnn"


def save_cnn(model: SmallCNN, record: dict[str, Any], path: str | Path) -> None:
    """Write the CNN's weights and ``record`` (class_names, preprocess, val_acc, source; the
    config is added) to ``path`` atomically."""
    write_safetensors(model, {**record, "config": model.config.to_dict()}, path, key=CNN_KEY)


def load_teacher(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, its record) from a CNN file or any ViT checkpoint; raises
    ValueError or OSError naming the file when it is neither."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, record = read_checkpoint(path, key=CNN_KEY)
        if record is not None:
            model = SmallCNN(CNNConfig(**record["config"]))
            model.load_state_dict(state, strict=True)
            return model.eval(), record
    return load_vit(path)
