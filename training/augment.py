"""Training augmentation: per image (stream mode, in DataLoader workers) or on whole uint8
batches (cache mode, after the batch reached its device), with the same recipe.

Recipe: random crop with zero padding, horizontal flip, TrivialAugment or RandAugment,
then (on float batches, both modes) normalization, random erasing and MixUp/CutMix.

torchvision's v2 transforms draw one set of random parameters per call, so on a batch
they would crop, flip or erase every image alike. Crop, flip and erasing are therefore
vectorized here with per-image parameters; the auto-augment policy is torchvision's,
applied to groups of ``group_size`` images (one random op per group).

Shape letters: B batch, C channels, H/W height/width, K classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from vit.preprocess import Preprocess

AUTO_AUGMENT = ("none", "trivial", "randaugment")


@dataclass
class Augment:
    """Augmentation strength. Every field is a config knob (``--data.augment.<field>``)."""

    crop_padding: int = 4  # random crop of the image size from the zero-padded image; 0 = off
    hflip: float = 0.5  # probability of a horizontal flip
    auto_augment: str = "trivial"  # "none", "trivial" (TrivialAugmentWide) or "randaugment"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9  # 0..30
    group_size: int = 8  # cache mode: images sharing one auto-augment op
    erasing: float = 0.25  # probability of random erasing per image
    mixup_alpha: float = 0.8  # 0 = no MixUp
    cutmix_alpha: float = 1.0  # 0 = no CutMix
    mix_prob: float = 1.0  # probability that a batch is mixed (MixUp or CutMix, half each)
    # no MixUp/CutMix from this epoch on (timm's mixup_off_epoch): the last epochs fit whole
    # images and hard labels; None = mix to the end
    mix_off_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"augment.auto_augment must be one of {AUTO_AUGMENT}, got {self.auto_augment!r}")
        for name in ("hflip", "erasing", "mix_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("crop_padding", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.group_size < 1:
            raise ValueError(f"augment.group_size must be >= 1, got {self.group_size}")
        if self.mix_off_epoch is not None and self.mix_off_epoch < 0:
            raise ValueError(f"augment.mix_off_epoch must be >= 0 or null, got {self.mix_off_epoch}")

    @classmethod
    def off(cls) -> Augment:
        return cls(crop_padding=0, hflip=0.0, auto_augment="none", erasing=0.0, mixup_alpha=0.0,
                   cutmix_alpha=0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def policy(self) -> v2.Transform | None:
        """torchvision's auto-augment policy on uint8 images, or ``None``."""
        if self.auto_augment == "trivial":
            return v2.TrivialAugmentWide()
        if self.auto_augment == "randaugment":
            return v2.RandAugment(num_ops=self.randaugment_ops, magnitude=self.randaugment_magnitude)
        return None


def image_transform(augment: Augment, size: int) -> v2.Transform:
    """Stream mode, per image: uint8 (3, S, S) tensor -> augmented uint8 (3, S, S)."""
    steps: list[v2.Transform] = []
    if augment.crop_padding:
        steps.append(v2.RandomCrop(size, padding=augment.crop_padding))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    policy = augment.policy()
    if policy is not None:
        steps.append(policy)
    return v2.Compose(steps) if steps else v2.Identity()


def random_crop(images: Tensor, padding: int, mode: str = "constant") -> Tensor:
    """Per-image random crop of the original size from the padded images (B, C, H, W):
    zero-padded, or ``mode="reflect"`` (float images) as ``torch.nn.functional.pad``."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode=mode)  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]  # (B, 1, 1, 1)
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch, chans, rows, cols]  # (B, C, H, W)


def random_flip(images: Tensor, p: float) -> Tensor:
    """Flip each image of (B, C, H, W) left-right with probability ``p``."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erasing(x: Tensor, p: float, scale: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> Tensor:
    """Per image with probability ``p``, set a random rectangle of ``scale`` of the area and
    aspect ``ratio`` to 0 (the mean colour, on normalized images). x: float (B, C, H, W)."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale) * h * w
    aspect = torch.exp(torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
    yy = torch.arange(h, device=dev)[None, :, None]  # (1, H, 1)
    xx = torch.arange(w, device=dev)[None, None, :]  # (1, 1, W)
    inside = ((yy >= top[:, None, None]) & (yy < (top + eh)[:, None, None])
              & (xx >= left[:, None, None]) & (xx < (left + ew)[:, None, None]))  # (B, H, W)
    inside &= (torch.rand(b, device=dev) < p)[:, None, None]
    return x.masked_fill(inside[:, None], 0.0)


class Normalize:
    """uint8 (B, 3, H, W) -> float32, scaled to [0, 1] and normalized, as
    :func:`vit.preprocess.normalize` does (same operations in the same order)."""

    def __init__(self, spec: Preprocess) -> None:
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255.0 - self.mean) / self.std


class BatchAugment:
    """The batch half of the recipe.

    ``geometric(uint8 batch)``: crop, flip and the auto-augment policy (cache mode only;
    stream mode did these per image). ``mix(float batch, labels)``: random erasing, then
    MixUp or CutMix -> (images, soft targets (B, K)).
    """

    def __init__(self, augment: Augment, num_classes: int) -> None:
        self.augment = augment
        self.num_classes = num_classes
        self.policy = augment.policy()
        mixers = []
        if augment.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes))
        if augment.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes))
        self.mixer = v2.RandomChoice(mixers) if mixers else None

    def geometric(self, images: Tensor) -> Tensor:
        a = self.augment
        if a.crop_padding:
            images = random_crop(images, a.crop_padding)
        if a.hflip:
            images = random_flip(images, a.hflip)
        if self.policy is not None:
            images = torch.cat([self.policy(group) for group in images.split(a.group_size)])
        return images

    def mix(self, x: Tensor, labels: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``epoch``: the training epoch (0-based), for ``mix_off_epoch``."""
        if self.augment.erasing:
            x = random_erasing(x, self.augment.erasing)
        off = self.augment.mix_off_epoch is not None and epoch >= self.augment.mix_off_epoch
        if self.mixer is not None and not off and torch.rand(()) < self.augment.mix_prob:
            return self.mixer(x, labels)
        return x, torch.nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
