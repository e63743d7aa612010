"""Distillation from a frozen teacher (DeiT, Touvron et al. 2021, without the distillation
token): the student's one head learns from the labels and from the teacher's answers on the
very images the student sees, augmented and mixed alike.

    loss = (1 - weight) * CE(student, targets) + weight * D(student, teacher)

``hard``: D is the cross-entropy with the teacher's top class (DeiT's choice, better than
soft targets there). ``soft``: D is T^2 * KL(teacher || student) of the logits divided by
``temperature`` (Hinton et al. 2015). Switched on by ``--model.distill.teacher FILE``.

Shape letters: B batch, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vit.errors import DataError
from vit.preprocess import Preprocess

from .teacher import load_teacher

KINDS = ("hard", "soft")


@dataclass
class Distill:
    """Every field is a config knob (``--model.distill.<field>``)."""

    teacher: str  # a CNN from benchmarks/cnn_baseline.py --output, or any ViT checkpoint
    weight: float = 0.5  # share of the teacher's term in the loss; 1 - weight for the labels'
    kind: str = "hard"  # "hard" (the teacher's top class) or "soft" (its distribution)
    temperature: float = 1.0  # soft only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"distill.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"distill.weight must be in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")


def distill_loss(student: Tensor, teacher: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    """The teacher's term of the loss from float logits (B, K) of both."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(-1))
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


class Teacher:
    """A frozen teacher, kept out of the student's modules (so out of its checkpoints, its
    EMA and its optimizer): loaded from ``config.teacher`` and checked against the data."""

    def __init__(self, config: Distill, class_names: list[str] | None, preprocess: Preprocess | None) -> None:
        self.config = config
        try:
            model, record = load_teacher(config.teacher)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise DataError(f"model.distill.teacher: {exc}") from exc
        names = record.get("class_names")
        if class_names and names and list(names) != list(class_names):
            raise DataError(f"model.distill.teacher: {config.teacher}: its classes {names} are not the "
                            f"data's {list(class_names)}")
        spec = record.get("preprocess")
        if preprocess is not None and spec and (tuple(spec["mean"]), tuple(spec["std"])) != (
                tuple(preprocess.mean), tuple(preprocess.std)):
            raise DataError(f"model.distill.teacher: {config.teacher}: it was trained on images normalized "
                            f"with mean {spec['mean']} and std {spec['std']}, the data uses "
                            f"{list(preprocess.mean)} and {list(preprocess.std)}")
        self.model: nn.Module = model.requires_grad_(False).eval()
        self.record: dict[str, Any] = record

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Float logits (B, K) of normalized images (B, 3, H, W), on their device, in the
        autocast the student runs in."""
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        return self.model(images.contiguous(memory_format=torch.channels_last)).float()

    def loss(self, student: Tensor, images: Tensor) -> Tensor:
        """The teacher's term for the student's logits (B, K) on ``images``."""
        return distill_loss(student, self(images), self.config.kind, self.config.temperature)
