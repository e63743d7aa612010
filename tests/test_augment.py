"""Training augmentation (training/augment.py): per-image crops, flips and erasing on whole
batches; MixUp/CutMix soft targets; the normalization equals the serving one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import (
    Augment,
    BatchAugment,
    Normalize,
    image_transform,
    random_crop,
    random_erasing,
    random_flip,
)
from vit.preprocess import Preprocess, preprocess_image


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


def test_mixing_stops_at_mix_off_epoch() -> None:
    augment = BatchAugment(Augment(erasing=0.0, mix_off_epoch=3), num_classes=5)
    x, labels = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    hard = torch.nn.functional.one_hot(labels, 5).float()
    torch.manual_seed(0)
    before = [augment.mix(x, labels, epoch=2) for _ in range(4)]
    assert all(not torch.equal(images, x) and not torch.equal(targets, hard) for images, targets in before)
    for epoch in (3, 7):
        images, targets = augment.mix(x, labels, epoch=epoch)
        assert torch.equal(images, x) and torch.equal(targets, hard)
    with pytest.raises(ValueError, match="augment.mix_off_epoch"):
        Augment(mix_off_epoch=-1)


def test_normalize_equals_preprocess_image() -> None:
    spec = Preprocess(crop_size=8, resize_size=8)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    batch = torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]  # (1, 3, 8, 8) uint8
    expected = preprocess_image(Image.fromarray(pixels), spec)
    torch.testing.assert_close(Normalize(spec)(batch)[0], torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_augment_settings_are_checked_and_off_changes_nothing() -> None:
    for bad in ({"auto_augment": "autoaugment"}, {"hflip": 1.5}, {"crop_padding": -1}, {"group_size": 0}):
        with pytest.raises(ValueError, match="augment."):
            Augment(**bad)
    off = Augment.off()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(image_transform(off, 8)(images[0]), images[0])
    assert torch.equal(BatchAugment(off, 3).geometric(images), images)
    assert Augment(auto_augment="randaugment").policy() is not None and off.policy() is None
