"""Framing uploads and drawing relevance maps over them (demo/overlay.py): the box the model
sees, the whole-image framing, the model's view, opacity, the dimmed outside, display sizes,
colormaps, the signed class map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from demo.overlay import (
    colormap_lut,
    crop_box,
    css_gradient,
    display_copy,
    draw_overlay,
    draw_signed_overlay,
    frame,
    mean_colour,
    model_view,
    resize_map,
    scale_box,
    signed_map,
)
from vit.preprocess import Preprocess, preprocess_image, resize_and_crop


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


def test_frame_crop_keeps_the_picture_and_boxes_the_centre_square() -> None:
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 451, 3), dtype=np.uint8))
    spec = Preprocess(crop_size=32, resize_size=32)
    framed = frame(photo, "crop", spec)
    display, scale = display_copy(photo)
    assert framed.model_input is photo and framed.display.size == display.size
    assert framed.box == scale_box(crop_box(photo.size, spec), scale)
    with pytest.raises(ValueError, match="framing must be one of crop, fit"):
        frame(photo, "zoom", spec)


@pytest.mark.parametrize("spec", [Preprocess(crop_size=32, resize_size=32),
                                  Preprocess(crop_size=224, resize_size=256)])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (40, 40)])
def test_frame_fit_shows_the_model_the_whole_picture(spec: Preprocess, size: tuple[int, int]) -> None:
    """'fit': the shared preprocessing of the framed input holds the whole picture (the mean
    colour around it), and the page's copy has the same layout, so the box is right."""
    photo = Image.new("RGB", size, (250, 20, 20))  # red: easy to find
    framed = frame(photo, "fit", spec)
    seen = resize_and_crop(framed.model_input, spec)  # what the model gets, as serving computes it
    assert framed.model_input.size == (spec.resize_size,) * 2 and seen.size == (spec.crop_size,) * 2
    red = np.asarray(seen)[..., 0] > 200  # (C, C)
    rows, cols = np.flatnonzero(red.any(axis=1)), np.flatnonzero(red.any(axis=0))
    span = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    assert span >= spec.crop_size - 1  # the long side spans the crop: nothing cut
    if size[0] != size[1]:
        assert tuple(np.asarray(seen)[0, 0]) == mean_colour(spec) or \
            tuple(np.asarray(seen)[-1, -1]) == mean_colour(spec)  # padding in the mean colour
    # the page's copy: the same picture at the same place within the model's square
    left, top, right, bottom = framed.box
    assert right - left == pytest.approx(bottom - top)
    box = tuple(round(v) for v in framed.box)
    shown = np.asarray(framed.display.crop(box).resize(seen.size))[..., 0] > 200
    assert (shown != red).mean() < 0.08


def test_model_view_undoes_the_normalisation() -> None:
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    spec = Preprocess(crop_size=32, resize_size=32)
    view = model_view(preprocess_image(photo, spec), spec, scale=4)
    assert view.size == (128, 128)
    small = np.asarray(view.resize((32, 32), Image.Resampling.NEAREST), dtype=np.int16)
    assert np.abs(small - np.asarray(resize_and_crop(photo, spec), dtype=np.int16)).max() <= 1


def test_signed_overlay_colours_evidence_for_and_against() -> None:
    photo = Image.new("RGB", (40, 40), (128, 128, 128))
    relevance = np.array([[1.0, 0.0], [-1.0, 0.0]])  # for, none / against, none
    out = np.asarray(draw_signed_overlay(photo, relevance, (0, 0, 40, 40), opacity=1.0), dtype=np.int16)
    r, g, b = out[5, 5], out[35, 5], out[20, 35]
    assert r[0] > r[2] + 60 and g[2] > g[0] + 60  # red where it raises the class, blue where it lowers it
    assert (np.abs(b - 128) <= 2).all()  # no effect: the photo
    np.testing.assert_array_equal(signed_map(np.array([[2.0, -4.0]])), [[0.5, -1.0]])  # 0 stays 0
    np.testing.assert_array_equal(signed_map(np.array([[1.0, 3.0]])), [[0.0, 1.0]])  # >= 0: min-max
    clear = np.asarray(draw_signed_overlay(photo, relevance, (0, 0, 40, 40), opacity=0.0))
    assert (clear == 128).all()


def test_css_gradient_is_the_colormap() -> None:
    css = css_gradient("inferno", stops=3)
    lut = colormap_lut("inferno")
    assert css.startswith("linear-gradient(to right, ")
    assert f"rgb({lut[0][0]}, {lut[0][1]}, {lut[0][2]})" in css
    assert css.count("rgb(") == 3
