"""The ImageFolder data module (training/image_data.py): cached == streamed ==
preprocess_image, bad files skipped and named once, batches as the model sees them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from training.augment import Augment
from training.image_data import ImageFolderData
from vit.errors import DataError
from vit.preprocess import preprocess_image


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


def test_mixing_follows_the_trainers_epoch(image_folder: Path, tmp_path: Path) -> None:
    import lightning as L

    dm = ImageFolderData(root=str(image_folder), mode="cache", cache_dir=str(tmp_path / "cache"),
                         num_workers=0, batch_size=8, augment=Augment(erasing=0.0, mix_off_epoch=2))
    dm.setup("fit")
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    dm.trainer.training = True
    images, labels = next(iter(dm.train_dataloader()))
    hard = torch.nn.functional.one_hot(labels, 3).float()
    for epoch, mixed in ((0, True), (1, True), (2, False), (5, False)):
        dm.trainer.fit_loop.epoch_progress.current.completed = epoch
        torch.manual_seed(0)
        _, y, targets = dm.on_after_batch_transfer((images, labels), 0)
        assert torch.equal(y, labels) and torch.equal(targets, hard) != mixed, epoch


def test_separate_validation_folder_must_have_the_same_classes(image_folder: Path, tmp_path: Path) -> None:
    val = make_image_folder(tmp_path / "val", per_class=2, seed=3)
    dm = data(image_folder, tmp_path, "cache", val_root=str(val))
    assert len(dm._datasets["train"]) == 36 and len(dm._datasets["val"]) == 6
    assert dm.val_files == [str(p) for p in sorted(val.rglob("*.png"))]
    other = make_image_folder(tmp_path / "other", per_class=2, classes=("a", "b", "c"))
    with pytest.raises(DataError, match="differ from the training folder"):
        data(image_folder, tmp_path, "stream", val_root=str(other))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="data.mode"):
        ImageFolderData(mode="lazy")
    with pytest.raises(ValueError, match="data.batch_size"):
        ImageFolderData(batch_size=0)
