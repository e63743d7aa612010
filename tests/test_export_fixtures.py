"""Shared builders for the export/serving tests: a tiny ViT trained a few steps on the
generated ImageFolder, saved in the project's checkpoint contract, and its exports.

Everything is built once per test session (cached here) so the suites stay fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder
from PIL import Image

TINY = dict(image_size=32, patch_size=8, num_classes=len(CLASSES), dim=64, depth=2, num_heads=2,
            mlp_ratio=2.0)
_CACHE: dict[object, object] = {}


def train_tiny(images: Path, steps: int = 40):
    """A tiny ViT trained ``steps`` Adam steps on ``images`` (plain loop, CPU, ~1 s)."""
    import torch

    from vit.preprocess import Preprocess, preprocess_image
    from vit.vit import ViT, ViTConfig

    torch.manual_seed(0)
    spec = Preprocess()
    paths = sorted(images.rglob("*.png"))
    x = torch.from_numpy(np.stack([preprocess_image(Image.open(p), spec) for p in paths]))
    y = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    model = ViT(ViTConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains 4x faster on one thread of a busy CPU
    try:
        for _ in range(steps):
            idx = torch.randperm(len(x))[:16]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    record = {"config": model.config.to_dict(), "class_names": list(CLASSES), "preprocess": spec.to_dict(),
              "val_acc": acc, "source": f"tests: {steps} steps on {images}"}
    return model, record


def save_ckpt(model, record: dict, path: Path) -> Path:
    """The documented contract: ``{"vit": record, "state_dict": {"model.<name>": tensor}}``."""
    import torch

    torch.save({"vit": record, "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A 3-class ImageFolder of 36 images (shared by the export and serving tests)."""
    if "data" not in _CACHE:
        _CACHE["data"] = make_image_folder(tmp_path_factory.mktemp("export_data") / "images")
    return _CACHE["data"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data) -> Path:
    if "ckpt" not in _CACHE:
        model, record = train_tiny(tiny_data)
        _CACHE["ckpt"] = save_ckpt(model, record, tmp_path_factory.mktemp("export_ckpt") / "tiny.ckpt")
    return _CACHE["ckpt"]


def exported(tmp_path_factory, checkpoint: Path, data: Path, **options):
    """Export ``checkpoint`` once per distinct ``options``; returns (onnx path, result)."""
    from export.cli import ExportOptions, export_checkpoint

    key = ("export", tuple(sorted(options.items())))
    if key not in _CACHE:
        out = tmp_path_factory.mktemp("onnx") / "model.onnx"
        result = export_checkpoint(checkpoint, out, ExportOptions(verify_images=data, **options))
        assert result.passed, "\n".join(r.line() for r in result.reports)
        _CACHE[key] = (out, result)
    return _CACHE[key]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, tiny_data) -> Path:
    """The plain float32 export (logits only)."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data)[0]


@pytest.fixture(scope="session")
def tiny_onnx_attention(tmp_path_factory, tiny_checkpoint, tiny_data) -> Path:
    """The float32 export with the ``attention`` output."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data, attention=True)[0]
