"""Evaluation preprocessing, defined once for training, export, serving and the demo.

Torch-free on purpose (PIL and numpy only): the ONNX serving path imports it without
PyTorch. Training's validation transforms are built from the same :class:`Preprocess`
and test-checked against :func:`preprocess_image`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """Resize the shorter side to ``resize_size`` (bilinear, antialiased), center-crop to
    ``crop_size``, scale to [0, 1], normalize by ``mean``/``std``; output (3, crop, crop)."""

    crop_size: int = 32
    resize_size: int = 32
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = field(default=CIFAR10_MEAN)
    std: tuple[float, ...] = field(default=CIFAR10_STD)

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.resize_size < self.crop_size:
            raise ValueError(
                f"Preprocess.resize_size ({self.resize_size}) must be >= crop_size ({self.crop_size})"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Preprocess.mean and Preprocess.std need 3 values (RGB)")
        if self.interpolation not in _PIL_MODES:
            raise ValueError(f"Preprocess.interpolation must be one of {sorted(_PIL_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


_PIL_MODES = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
              "nearest": Image.Resampling.NEAREST}


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, LA, P, RGBA, CMYK, I;16...) to RGB.

    Transparent pixels are composited onto white, as a viewer shows them."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, spec: Preprocess) -> Image.Image:
    """Shorter side to ``resize_size``, then a center crop of ``crop_size`` (torchvision's
    rounding), on an RGB PIL image."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, _PIL_MODES[spec.interpolation])
    w, h = image.size
    c = spec.crop_size
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    return image.crop((left, top, left + c, top + c))


def normalize(rgb: np.ndarray, spec: Preprocess) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), scaled and normalized."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.moveaxis(x, -1, -3).copy()


def preprocess_image(image: Image.Image, spec: Preprocess) -> np.ndarray:
    """Any PIL image -> float32 (3, crop, crop), exactly as validation sees it."""
    return normalize(np.asarray(resize_and_crop(to_rgb(image), spec)), spec)
