"""Drawing relevance maps over the photo a person uploaded (numpy, PIL, matplotlib colormaps).

The model sees a center crop of the upload (:func:`vit.preprocess.resize_and_crop`), so a
map of the patch grid belongs to that crop's box in the original picture:
:func:`crop_box` finds it, and :func:`draw_overlay` colours the box and dims the rest.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vit.preprocess import Preprocess
from vit.rollout import normalize_maps

Box = tuple[float, float, float, float]  # left, top, right, bottom


def crop_box(size: tuple[int, int], spec: Preprocess) -> Box:
    """The region of an image of ``size`` (width, height) that the model sees after
    resizing the shorter side to ``spec.resize_size`` and center-cropping ``spec.crop_size``,
    in the image's own pixel coordinates (the same rounding as ``resize_and_crop``)."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    rw, rh = (new_short, new_long) if w <= h else (new_long, new_short)
    c = spec.crop_size
    top, left = int(round((rh - c) / 2.0)), int(round((rw - c) / 2.0))
    sx, sy = w / rw, h / rh
    return (left * sx, top * sy, (left + c) * sx, (top + c) * sy)


def display_copy(image: Image.Image, *, min_side: int = 320,
                 max_side: int = 640) -> tuple[Image.Image, float]:
    """A copy of an RGB image sized for the page (tiny CIFAR pictures are enlarged, large
    photos shrunk) and the scale factor applied."""
    w, h = image.size
    scale = 1.0
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
    elif min(w, h) < min_side:
        scale = min(min_side / min(w, h), max_side / max(w, h))
    if scale == 1.0:
        return image.copy(), scale
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.LANCZOS), scale


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 lookup table."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}")
    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def resize_map(relevance: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (Gh, Gw) map -> float32 (height, width) in [0, 1], bilinear, for ``size`` (width, height)."""
    norm = normalize_maps(np.asarray(relevance, dtype=np.float64)).astype(np.float32)
    resized = Image.fromarray(norm).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def draw_overlay(
    image: Image.Image,
    relevance: np.ndarray,
    box: Box,
    *,
    opacity: float = 0.5,
    colormap: str = "inferno",
    outside: float = 0.35,
) -> Image.Image:
    """Blend the colour-mapped ``relevance`` (Gh, Gw) into ``box`` of the RGB ``image`` with
    the given ``opacity`` (0: photo only, 1: map only); the area outside the box, which
    the model did not see, is dimmed to ``outside`` brightness and outlined."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, rgb.shape[1]), min(bottom, rgb.shape[0])
    out = rgb * outside
    if right > left and bottom > top:
        heat = resize_map(relevance, (right - left, bottom - top))  # (h, w)
        colours = colormap_lut(colormap)[(heat * 255.0 + 0.5).astype(np.uint8)].astype(np.float32)
        region = rgb[top:bottom, left:right]
        out[top:bottom, left:right] = (1.0 - opacity) * region + opacity * colours
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if (left, top, right, bottom) != (0, 0, rgb.shape[1], rgb.shape[0]):
        ImageDraw.Draw(result).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255))
    return result


def scale_box(box: Box, scale: float) -> Box:
    return (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
