"""Drawing relevance maps over the uploaded photo (demo/overlay.py): the box the model sees,
opacity, the dimmed outside, display sizes, colormaps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from demo.overlay import colormap_lut, crop_box, display_copy, draw_overlay, resize_map, scale_box
from vit.preprocess import Preprocess, resize_and_crop


def test_crop_box_is_what_the_model_sees() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8))
    for spec in (Preprocess(crop_size=32, resize_size=32), Preprocess(crop_size=224, resize_size=256)):
        box = crop_box(photo.size, spec)
        side = 300 * spec.crop_size / spec.resize_size
        pixel = 451 / spec.resize_size  # one resized pixel, in photo pixels
        np.testing.assert_allclose([box[2] - box[0], box[3] - box[1]], [side, side], atol=pixel)
        np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [225.5, 150], atol=pixel)
        model_view = np.asarray(resize_and_crop(photo, spec), dtype=np.float32)
        ours = np.asarray(photo.crop(tuple(round(v) for v in box)).resize(model_view.shape[:2][::-1],
                                                                          Image.Resampling.BILINEAR))
        assert np.abs(ours - model_view).mean() < 25  # same region (random pixels resample differently)


def test_overlay_opacity_and_outside() -> None:
    photo = Image.new("RGB", (40, 20), (200, 100, 50))
    relevance = np.array([[0.0, 1.0], [0.5, 0.2]])
    clear = np.asarray(draw_overlay(photo, relevance, (10, 0, 30, 20), opacity=0.0))
    assert (clear[1:-1, 11:29] == (200, 100, 50)).all()  # inside, opacity 0: the photo
    assert (clear[:, :9] == np.round(np.array([200, 100, 50]) * 0.35)).all()  # outside: dimmed
    full = np.asarray(draw_overlay(photo, relevance, (10, 0, 30, 20), opacity=1.0))
    assert not (full[1:-1, 11:29] == (200, 100, 50)).all(axis=-1).any()
    with pytest.raises(ValueError, match="opacity must be in"):
        draw_overlay(photo, relevance, (10, 0, 30, 20), opacity=1.5)


def test_display_copy_enlarges_small_and_shrinks_large_photos() -> None:
    small, scale = display_copy(Image.new("RGB", (32, 32)))
    assert small.size == (320, 320) and scale == 10.0
    large, scale = display_copy(Image.new("RGB", (1280, 960)))
    assert large.size == (640, 480) and scale == 0.5
    same = Image.new("RGB", (400, 500))
    copy, scale = display_copy(same)
    assert copy.size == (400, 500) and scale == 1.0 and copy is not same
    assert scale_box((1.0, 2.0, 3.0, 4.0), 2.0) == (2.0, 4.0, 6.0, 8.0)


def test_colormap_and_resized_map() -> None:
    lut = colormap_lut("inferno")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not np.array_equal(lut[0], lut[-1])
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap_lut("no-such-map")
    heat = resize_map(np.array([[0.0, 2.0], [1.0, 4.0]]), (40, 20))
    assert heat.shape == (20, 40) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0) and heat[0, 0] == 0.0
