"""Shared fixtures: small, generated, local data only (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("circle", "square", "stripes")


def draw(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A 32x32 RGB image whose class is visible: a disc, a square or stripes, on noise."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    color = rng.integers(150, 256, 3, dtype=np.uint8)
    if kind == "circle":
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = color
    elif kind == "square":
        img[cy - 6 : cy + 6, cx - 6 : cx + 6] = color
    else:
        img[(xx // 4) % 2 == 0] = color
    return Image.fromarray(img)


def make_image_folder(root: Path, per_class: int = 12, classes: tuple[str, ...] = CLASSES,
                      seed: int = 0, ext: str = "png") -> Path:
    """Write ``root/<class>/<i>.<ext>`` and return ``root``."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(name, rng).save(root / name / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny 3-class ImageFolder (36 PNG images, 32x32)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and far faster than 2 threads on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
