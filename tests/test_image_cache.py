"""The decode-once image cache (training/image_cache.py): bad files are skipped and named,
the cache is reused and keyed on the folder and the geometry, images decode as validation
preprocesses them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from training.image_cache import cached_decode, load_resized, try_load_image
from vit.image_folder import scan_folder
from vit.preprocess import Preprocess, preprocess_image


def test_truncated_image_is_skipped_when_decoding(image_folder: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = image_folder / "stripes" / "000.png"
    path.write_bytes(path.read_bytes()[:60])  # a valid header, then nothing
    caplog.set_level(logging.WARNING)
    decoded = cached_decode(scan_folder(image_folder), Preprocess(), tmp_path / "cache")
    assert len(decoded.files) == 35 and "stripes/000.png" not in decoded.files
    assert "000.png" in caplog.text


def test_cache_is_reused_and_keyed_on_the_folder(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cached_decode(scan_folder(image_folder), Preprocess(), cache)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.tmp"))
    again = cached_decode(scan_folder(image_folder), Preprocess(), cache)
    assert torch.equal(first.images, again.images) and first.files == again.files
    make_image_folder(image_folder, per_class=13, seed=1)  # one more image per class
    grown = cached_decode(scan_folder(image_folder), Preprocess(), cache)
    assert len(grown.files) == 39 and len(list(cache.glob("*.pt"))) == 2
    cached_decode(scan_folder(image_folder), Preprocess(crop_size=24, resize_size=28), cache)
    assert len(list(cache.glob("*.pt"))) == 3


def test_load_resized_is_the_validation_image_before_normalization(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(path)
    spec = Preprocess(crop_size=24, resize_size=28)
    array = load_resized(path, spec)
    assert array.dtype == np.uint8 and array.shape == (3, 24, 24)
    mean, std = np.array(spec.mean)[:, None, None], np.array(spec.std)[:, None, None]
    with Image.open(path) as image:
        expected = preprocess_image(image, spec)
    np.testing.assert_allclose((array / 255.0 - mean) / std, expected, atol=1e-5)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert try_load_image(tmp_path / "bad.png", spec) is None
