"""The demo's work without the page (demo/views.py): uploads read safely with readable
messages, and every view redrawn from the stored attention without running the model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import corrupt_files
from PIL import Image

from demo.app import example_images
from demo.backend import OnnxBackend
from demo.views import (
    VIEWS,
    Session,
    UploadError,
    ViewSettings,
    analyze,
    default_view,
    open_upload,
    relevance,
    render,
    render_class_map,
)
from vit.rollout import attention_rollout, contribution_rollout, raw_attention


def test_views_redraw_from_stored_attention(demo_model: dict[str, Path]) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    session = analyze(backend, open_upload(str(example_images()[0])))
    weights = session.attention[None]  # (1, L, H, N, N)
    got = relevance(backend.card, session, ViewSettings(head_fusion="max", discard_ratio=0.5, start_layer=1))
    np.testing.assert_allclose(got, attention_rollout(weights, head_fusion="max", discard_ratio=0.5,
                                                      start_layer=1)[0])
    got = relevance(backend.card, session, ViewSettings(view=VIEWS[1], layer=0, head="1"))
    np.testing.assert_allclose(got, raw_attention(weights, 0, 1)[0])
    images = {opacity: np.asarray(render(backend.card, session, ViewSettings(opacity=opacity)))
              for opacity in (0.0, 1.0)}
    assert images[0.0].shape == np.asarray(session.photo).shape
    assert not np.array_equal(images[0.0], images[1.0])


def test_bad_uploads_get_readable_messages(tmp_path: Path) -> None:
    paths = corrupt_files(tmp_path)
    expected = {"empty": "empty file", "text": "not an image", "truncated": "truncated or corrupt",
                "bomb": "above the limit"}
    for name, path in paths.items():
        with pytest.raises(UploadError, match=expected[name]) as info:
            open_upload({"path": str(path), "orig_name": path.name})
        assert str(tmp_path) not in str(info.value)  # no server paths in the message


def test_open_upload_accepts_payloads_paths_and_images(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (40, 30), 128).save(path)
    for payload in ({"path": str(path), "orig_name": "mine.png"}, str(path), Image.open(path)):
        image = open_upload(payload)
        assert image.mode == "RGB" and image.size == (40, 30)
    with pytest.raises(UploadError, match="No image received"):
        open_upload({"path": None})
    (tmp_path / "x.jpg").write_bytes(b"junk")
    with pytest.raises(UploadError, match="Cannot use 'holiday.jpg'"):
        open_upload({"path": str(tmp_path / "x.jpg"), "orig_name": "holiday.jpg"})


def test_views_clamp_layer_and_head_and_draw_nothing_without_attention(demo_model: dict[str, Path]) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    session = analyze(backend, open_upload(str(example_images()[0])))
    card = backend.card
    last = ViewSettings(view=VIEWS[1], layer=card.depth - 1, head=str(card.num_heads - 1))
    beyond = ViewSettings(view=VIEWS[1], layer=99, head="7")
    np.testing.assert_array_equal(relevance(card, session, beyond), relevance(card, session, last))
    first = relevance(card, session, ViewSettings(start_layer=0))
    np.testing.assert_array_equal(relevance(card, session, ViewSettings(start_layer=-5)), first)
    blind = Session(session.photo, session.box, replace(session.analysis, attention=None))
    assert relevance(card, blind, ViewSettings()) is None
    assert render(card, blind, ViewSettings()) is session.photo
    assert render_class_map(session, None, 0.5) is None
    class_map = render_class_map(session, np.eye(4), 1.0)
    assert class_map.size == session.photo.size


def test_image_files_are_written_once_per_content_and_pruned(tmp_path: Path) -> None:
    import os
    import time

    from PIL import Image

    from demo.views import ImageFiles

    files = ImageFiles(tmp_path / "img", keep_seconds=3600)
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    a, b, again = files(red), files(blue), files(red.copy())
    assert a == again != b and files(None) is None
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted({Path(a).name, Path(b).name})
    with Image.open(a) as img:
        assert img.getpixel((0, 0)) == (255, 0, 0)
    old = time.time() - 7200
    os.utime(b, (old, old))
    files._pruned = 0.0  # the next call may prune again
    files(red)
    assert Path(a).is_file() and not Path(b).exists()


def test_analyze_frames_the_upload_as_asked(demo_model: dict[str, Path]) -> None:
    """'crop' and 'fit' give the model different inputs; each session keeps the picture the
    model was given (enlarged) and a box that covers exactly the model's square."""
    from demo.overlay import frame, mean_colour
    from vit.preprocess import preprocess_image

    backend = OnnxBackend(demo_model["onnx"])
    spec = backend.card.preprocess
    wide = Image.fromarray(np.random.default_rng(3).integers(0, 255, (30, 90, 3), dtype=np.uint8))
    crop, fit = analyze(backend, wide, "crop"), analyze(backend, wide, "fit")
    assert (crop.framing, fit.framing) == ("crop", "fit")
    np.testing.assert_allclose(crop.analysis.pixels, preprocess_image(wide, spec), atol=1e-6)
    framed = frame(wide, "fit", spec).model_input
    np.testing.assert_allclose(fit.analysis.pixels, preprocess_image(framed, spec), atol=1e-6)
    assert not np.allclose(crop.analysis.pixels, fit.analysis.pixels)
    assert crop.model_view.size == fit.model_view.size == (8 * spec.crop_size,) * 2
    corner = np.asarray(fit.model_view)[0, 0]
    assert np.abs(corner.astype(int) - mean_colour(spec)).max() <= 1  # fit: padding above the picture
    assert fit.box == (0.0, 0.0, *fit.photo.size)  # the whole (padded) square is seen
    left, _, right, _ = crop.box
    assert right - left < crop.photo.width / 2  # crop: only the middle third of a 3:1 picture


def test_class_map_drawn_red_for_and_blue_against(demo_model: dict[str, Path]) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    session = analyze(backend, Image.new("RGB", (64, 64), (128, 128, 128)))
    grid = np.zeros(backend.card.grid)
    grid[0, 0], grid[-1, -1] = 1.0, -1.0
    drawn = np.asarray(render_class_map(session, grid, 1.0), dtype=np.int16)
    h, w = drawn.shape[:2]
    top_left, bottom_right, middle = drawn[h // 16, w // 16], drawn[-h // 16, -w // 16], drawn[h // 2, w // 2]
    assert top_left[0] > top_left[2] + 60 and bottom_right[2] > bottom_right[0] + 60
    assert (np.abs(middle - 128) <= 2).all()


def test_contribution_rollout_view_is_the_default_and_the_same_from_onnx_and_pytorch(
        demo_model: dict[str, Path]) -> None:
    """Files exported with attention carry the blocks' contributions: the page opens on
    contribution rollout, drawn from the stored outputs, and the checkpoint draws the same map."""
    from demo.backend import TorchBackend
    from demo.look import map_note, view_choices

    backend, torch_backend = OnnxBackend(demo_model["onnx"]), TorchBackend(demo_model["checkpoint"])
    card = backend.card
    assert card.has_contributions and torch_backend.card.has_contributions
    assert default_view(card) == VIEWS[2] and [v for _, v in view_choices(card)] == [VIEWS[2], *VIEWS[:2]]
    assert "Contribution rollout" in map_note(card, VIEWS[2]) and "ALTI" in map_note(card, VIEWS[2])
    image = open_upload(str(example_images()[0]))
    session, torch_session = analyze(backend, image), analyze(torch_backend, image)
    analysis = session.analysis
    assert analysis.contributions.shape == (card.depth, *analysis.attention.shape[-2:])  # (L, N, N)
    settings = ViewSettings(view=VIEWS[2])
    got = relevance(card, session, settings)
    layout = dict(num_prefix_tokens=card.num_prefix_tokens, grid=card.grid, pool=card.pool)
    np.testing.assert_allclose(got, contribution_rollout(analysis.contributions[None], None, **layout)[0])
    assert not np.allclose(got, relevance(card, session, ViewSettings()))  # not attention rollout
    from_torch = relevance(torch_backend.card, torch_session, settings)
    np.testing.assert_allclose(from_torch, got, rtol=1e-3, atol=1e-4)
    # a file without contributions (exported before December 2026): attention rollout, and no such choice
    old = replace(card, has_contributions=False)
    legacy = Session(session.photo, session.box, replace(analysis, contributions=None))
    np.testing.assert_array_equal(relevance(old, legacy, settings), relevance(old, legacy, ViewSettings()))
    assert default_view(old) == VIEWS[0] and VIEWS[2] not in [v for _, v in view_choices(old)]
