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
    open_upload,
    relevance,
    render,
    render_class_map,
)
from vit.rollout import attention_rollout, raw_attention


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
