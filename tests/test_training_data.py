"""Training data: folder scanning, the split, the decode cache, cached == streamed ==
preprocess_image, bad files, batch augmentation, optimizer groups and the schedule."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from training.augment import Augment, BatchAugment, random_crop, random_erasing, random_flip
from training.data import DataError, cached_decode, resolve_root, scan_folder, split_indices
from training.image_data import ImageFolderData
from training.optim import WarmupCosine, param_groups
from vit.preprocess import Preprocess, preprocess_image
from vit.vit import ViT, ViTConfig


def odd_images(root: Path) -> None:
    """Images that make preprocessing do work: non-square, larger, RGBA, grayscale, palette."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(root / "circle" / "wide.png")
    rgba = Image.fromarray(rng.integers(0, 256, (70, 36, 4), dtype=np.uint8), "RGBA")
    rgba.save(root / "square" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8), "L").save(root / "stripes" / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).convert("P").save(
        root / "stripes" / "palette.png")


def data(root: Path, tmp_path: Path, mode: str, **kw: object) -> ImageFolderData:
    dm = ImageFolderData(root=str(root), mode=mode, cache_dir=str(tmp_path / "cache"), num_workers=0,
                         batch_size=4, augment=Augment.off(), **kw)
    dm.setup("fit")
    return dm


def test_scan_and_split_are_deterministic_and_stratified(image_folder: Path) -> None:
    index = scan_folder(image_folder)
    assert index.class_names == ["circle", "square", "stripes"] and len(index) == 36
    train, val = split_indices(index.labels, 0.25, seed=3)
    assert (train, val) == split_indices(index.labels, 0.25, seed=3)
    assert split_indices(index.labels, 0.25, seed=4)[1] != val
    assert sorted(train + val) == list(range(36))
    assert [sum(index.labels[i] == c for i in val) for c in range(3)] == [3, 3, 3]


def test_relative_root_falls_back_to_the_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_root("tests") == Path(__file__).resolve().parent
    with pytest.raises(DataError, match="not found"):
        resolve_root("no/such/folder")


def test_empty_folder_and_single_class_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path / "empty")
    one = make_image_folder(tmp_path / "one", per_class=3, classes=("cat",))
    with pytest.raises(DataError, match="only one class folder"):
        scan_folder(one)
    two = make_image_folder(tmp_path / "two", per_class=3, classes=("a", "b"))
    (two / "c").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_folder(two)


@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_corrupt_and_non_image_files_are_named_and_skipped(image_folder: Path, tmp_path: Path, mode: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (image_folder / "circle" / "notes.txt").write_text("not an image")
    (image_folder / "square" / "garbage.png").write_bytes(b"\x00\x01 definitely not a PNG")
    caplog.set_level(logging.WARNING)
    dm = data(image_folder, tmp_path, mode, val_fraction=0.25)
    assert len(dm._datasets["train"]) + len(dm._datasets["val"]) == 36
    text = caplog.text
    assert "notes.txt" in text and "garbage.png" in text
    assert len([line for line in text.splitlines() if "garbage.png" in line]) == 1


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


def test_cached_equals_streamed_equals_preprocess_image(image_folder: Path, tmp_path: Path) -> None:
    odd_images(image_folder)
    kw = dict(val_fraction=0.25, image_size=24, resize_size=28)
    cached = data(image_folder, tmp_path, "cache", **kw)
    streamed = data(image_folder, tmp_path, "stream", **kw)
    assert cached.val_files == streamed.val_files and len(cached.val_files) == 10
    spec = cached.preprocess
    # training split, item by item (uint8, before any batch work)
    a_set, b_set = cached._datasets["train"], streamed._datasets["train"]
    assert len(a_set) == len(b_set) == 30
    for i in range(len(a_set)):
        assert torch.equal(a_set[i][0], b_set[i][0]) and int(a_set[i][1]) == int(b_set[i][1])
    # validation batches as the model sees them, and against the serving preprocessing
    a_images = torch.cat([cached.on_after_batch_transfer(b, 0)[0] for b in cached.val_dataloader()])
    b_images = torch.cat([streamed.on_after_batch_transfer(b, 0)[0] for b in streamed.val_dataloader()])
    assert a_images.shape == (10, 3, 24, 24)
    torch.testing.assert_close(a_images, b_images, rtol=0, atol=0)
    for image, path in zip(a_images, cached.val_files, strict=True):
        with Image.open(path) as img:
            expected = torch.from_numpy(preprocess_image(img, spec))
        torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


def test_training_batches_without_augmentation_are_eval_images(image_folder: Path, tmp_path: Path) -> None:
    dm = data(image_folder, tmp_path, "cache", val_fraction=0.25)
    images, labels = next(iter(dm.val_dataloader()))
    x, y, targets = dm.augment_batch(images, labels)
    torch.testing.assert_close(x, dm.normalize(images))
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 3).float())


def test_batch_augmentation_per_image() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop(images, 0), images)
    cropped = random_crop(images, 2)
    # every crop is a shifted window of its own zero-padded image, and shifts differ across images
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(64):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], cropped[i])]
        assert hits
        shifts.add(hits[0])
    assert len(shifts) > 5
    flipped = random_flip(images, 1.0)
    assert torch.equal(flipped, images.flip(-1)) and torch.equal(random_flip(images, 0.0), images)
    x = torch.ones(64, 3, 8, 8)
    erased = random_erasing(x, 1.0)
    per_image = (erased == 0).flatten(1).float().mean(1)
    assert (per_image > 0).all() and (per_image < 1).all() and len(set(per_image.tolist())) > 3
    assert torch.equal(random_erasing(x, 0.0), x)


def test_mixing_gives_soft_targets_that_sum_to_one() -> None:
    augment = BatchAugment(Augment(), num_classes=5)
    x, labels = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    geo = augment.geometric(torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8))
    assert geo.shape == (16, 3, 8, 8) and geo.dtype == torch.uint8
    mixed, targets = augment.mix(x, labels)
    assert mixed.shape == x.shape and targets.shape == (16, 5)
    torch.testing.assert_close(targets.sum(1), torch.ones(16))


def test_param_groups_skip_decay_on_norms_biases_and_tokens() -> None:
    model = ViT(ViTConfig(image_size=16, patch_size=8, num_classes=3, dim=16, depth=3, num_heads=2))
    groups = param_groups(model, weight_decay=0.05, depth=3)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.bias", "head.bias"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay and "head.weight" not in no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    layered = param_groups(model, weight_decay=0.05, depth=3, layer_decay=0.5)
    scale = {names[id(p)]: g["lr_scale"] for g in layered for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.2.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.attn.qkv.weight"] == 0.125 and scale["patch_embed.proj.weight"] == 0.0625


def test_warmup_then_cosine() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=20, min_factor=0.1)
    factors = [schedule(s) for s in range(21)]
    assert factors[:4] == sorted(factors[:4]) and factors[0] > 0
    assert math.isclose(factors[4], 1.0) and math.isclose(factors[20], 0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
