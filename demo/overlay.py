"""Framing the upload for the model, and drawing relevance maps over what the person sees
(numpy, PIL, matplotlib colormaps).

Two framings, both ending in the shared preprocessing (:func:`vit.preprocess.preprocess_image`):

- ``crop``: the picture as it is; the preprocessing resizes its shorter side and keeps the
  centre square (as in training), so the sides of a wide picture are not seen.
  :func:`crop_box` finds that square in the picture.
- ``fit``: the whole picture, scaled to fit the model's square and centred on the dataset's
  mean colour (which the normalisation turns into zeros); nothing is cut, the subject gets
  smaller.

:func:`frame` returns what the model is given, the copy the page shows and the model's box
on it; :func:`draw_overlay` colours that box and dims the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vit.preprocess import Preprocess
from vit.rollout import normalize_maps

Box = tuple[float, float, float, float]  # left, top, right, bottom
FRAMINGS = ("crop", "fit")
ROLLOUT_COLORMAP = "inferno"  # sequential: dark = little, bright = much
CLASS_COLORMAP = "RdBu_r"  # diverging: blue = lowers the class score, red = raises it
_PIL_MODES = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
              "nearest": Image.Resampling.NEAREST}


@dataclass
class Framed:
    """One upload framed for the model: ``model_input`` goes to the shared preprocessing,
    ``display`` is the copy the page shows and ``box`` the model's square on it."""

    model_input: Image.Image
    display: Image.Image
    box: Box


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


def mean_colour(spec: Preprocess) -> tuple[int, int, int]:
    """The dataset's mean colour as RGB bytes: padding that normalises to (about) zero."""
    r, g, b = (int(round(m * 255.0)) for m in spec.mean)
    return r, g, b


def frame(image: Image.Image, framing: str, spec: Preprocess, *, display_side: int = 640) -> Framed:
    """Frame an RGB ``image`` for the model (``"crop"`` or ``"fit"``, see the module doc)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    if framing == "crop":
        display, scale = display_copy(image)
        return Framed(image, display, scale_box(crop_box(image.size, spec), scale))
    # fit: the longer side becomes the crop, centred on a resize_size square of the mean colour,
    # so the shared resize is a no-op and its centre crop holds the whole picture
    w, h = image.size
    side, c = spec.resize_size, spec.crop_size
    fw, fh = max(1, round(w * c / max(w, h))), max(1, round(h * c / max(w, h)))
    left, top = (side - fw) // 2, (side - fh) // 2
    model_input = Image.new("RGB", (side, side), mean_colour(spec))
    model_input.paste(image.resize((fw, fh), _PIL_MODES[spec.interpolation]), (left, top))
    k = display_side / side  # the page's copy: the same layout, display_side pixels wide
    display = Image.new("RGB", (display_side, display_side), mean_colour(spec))
    display.paste(image.resize((max(1, round(fw * k)), max(1, round(fh * k))), Image.Resampling.LANCZOS),
                  (round(left * k), round(top * k)))
    return Framed(model_input, display, scale_box(crop_box((side, side), spec), k))


def model_view(pixels: np.ndarray, spec: Preprocess, *, scale: int = 8) -> Image.Image:
    """The normalised model input (3, H, W) back as the RGB picture the model was given,
    enlarged ``scale`` times with square pixels (nearest neighbour)."""
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    rgb = np.clip((pixels * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (3, H, W)
    image = Image.fromarray(np.moveaxis(rgb, 0, -1))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a (256, 3) uint8 lookup table."""
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}")
    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def css_gradient(name: str, stops: int = 9) -> str:
    """A CSS ``linear-gradient`` (left to right) of a colormap, for the page's legend."""
    lut = colormap_lut(name)
    colours = [lut[round(i * 255 / (stops - 1))] for i in range(stops)]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in colours) + ")"


def resize_map(relevance: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (Gh, Gw) map -> float32 (height, width) in [0, 1], bilinear, for ``size`` (width, height)."""
    norm = normalize_maps(np.asarray(relevance, dtype=np.float64)).astype(np.float32)
    return _resize(norm, size, 0.0, 1.0)


def signed_map(relevance: np.ndarray) -> np.ndarray:
    """A class map (Gh, Gw) -> [-1, 1]: a map with negative values is divided by its largest
    magnitude, so 0 stays 0 (no effect on the class); a map without (e.g. gradient-weighted
    rollout) is min-max scaled to [0, 1]."""
    values = np.asarray(relevance, dtype=np.float64)
    if values.min() < 0.0:
        top = np.abs(values).max()
        return values / top if top > 0 else np.zeros_like(values)
    return normalize_maps(values)


def _resize(values: np.ndarray, size: tuple[int, int], low: float, high: float) -> np.ndarray:
    resized = Image.fromarray(values.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), low, high)


def _box_region(rgb: np.ndarray, box: Box) -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(round(v)) for v in box)
    return max(left, 0), max(top, 0), min(right, rgb.shape[1]), min(bottom, rgb.shape[0])


def _blend(image: Image.Image, box: Box, paint: Callable[[tuple[int, int]], tuple[np.ndarray, Any]], *,
           opacity: float, outside: float) -> Image.Image:
    """``image`` with ``box`` blended towards the colours ``paint((w, h))`` returns, by its
    weight (a number or (h, w, 1)); outside the box dimmed to ``outside`` and outlined."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    left, top, right, bottom = region = _box_region(rgb, box)
    out = rgb * outside
    if right > left and bottom > top:
        colours, weight = paint((right - left, bottom - top))  # (h, w, 3) uint8
        out[top:bottom, left:right] = ((1.0 - weight) * rgb[top:bottom, left:right]
                                       + weight * colours.astype(np.float32))
    return _finish(out, region)


def _finish(out: np.ndarray, region: tuple[int, int, int, int]) -> Image.Image:
    """uint8 picture, outlined where the model's box is not the whole picture."""
    left, top, right, bottom = region
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if region != (0, 0, out.shape[1], out.shape[0]):
        ImageDraw.Draw(result).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255))
    return result


def draw_overlay(
    image: Image.Image,
    relevance: np.ndarray,
    box: Box,
    *,
    opacity: float = 0.5,
    colormap: str = ROLLOUT_COLORMAP,
    outside: float = 0.35,
) -> Image.Image:
    """Blend the colour-mapped ``relevance`` (Gh, Gw), min-max scaled, into ``box`` of the RGB
    ``image`` with the given ``opacity`` (0: photo only, 1: map only); the area outside the
    box, which the model did not see, is dimmed to ``outside`` brightness and outlined."""
    def paint(size: tuple[int, int]) -> tuple[np.ndarray, float]:
        heat = resize_map(relevance, size)  # (h, w)
        return colormap_lut(colormap)[(heat * 255.0 + 0.5).astype(np.uint8)], opacity

    return _blend(image, box, paint, opacity=opacity, outside=outside)


def draw_signed_overlay(
    image: Image.Image,
    relevance: np.ndarray,
    box: Box,
    *,
    opacity: float = 0.5,
    colormap: str = CLASS_COLORMAP,
    outside: float = 0.35,
) -> Image.Image:
    """A class map over the photo: :func:`signed_map` values coloured by a diverging
    ``colormap`` (blue -1 .. red +1) and blended in proportion to their size, so a patch with
    no effect on the class shows the photo; outside the box as :func:`draw_overlay`."""
    def paint(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        values = _resize(signed_map(relevance), size, -1.0, 1.0)  # (h, w)
        colours = colormap_lut(colormap)[((values + 1.0) * 127.5 + 0.5).astype(np.uint8)]  # (h, w, 3)
        return colours, (opacity * np.abs(values))[..., None]  # weight (h, w, 1)

    return _blend(image, box, paint, opacity=opacity, outside=outside)


def scale_box(box: Box, scale: float) -> Box:
    return (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
