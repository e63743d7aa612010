"""Distillation from a frozen teacher (DeiT, Touvron et al. 2021, without the distillation
token): the student's one head learns from the labels and from the teacher's answers on the
very images the student sees, augmented and mixed alike.

    loss = (1 - weight) * CE(student, targets) + weight * D(student, teacher)

``hard``: D is the cross-entropy with the teacher's top class (DeiT's choice, better than
soft targets there). ``soft``: D is T^2 * KL(teacher || student) of the logits divided by
``temperature`` (Hinton et al. 2015). Switched on by ``--model.distill.teacher FILE``.

The teacher can be several files, an ensemble: its answer is the (weighted) mean of their
class probabilities. With ``flip_tta`` each of them answers for the image and its mirror
image, averaged. Either makes a teacher more accurate than its members for the price of more
forward passes per training step.

Shape letters: B batch, K classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    # a CNN from benchmarks/cnn_baseline.py --output or any ViT checkpoint; a list: an ensemble
    teacher: str | list[str]
    weight: float = 0.5  # share of the teacher's term in the loss; 1 - weight for the labels'
    kind: str = "hard"  # "hard" (the teacher's top class) or "soft" (its distribution)
    temperature: float = 1.0  # soft only
    teacher_weights: list[float] | None = None  # an ensemble's weights, one a file (default: equal)
    flip_tta: bool = False  # each teacher answers for the image and its mirror image, averaged

    def __post_init__(self) -> None:
        files = self.files()
        if not files:
            raise ValueError("distill.teacher must name at least one file")
        weights = self.teacher_weights
        if weights is not None and (len(weights) != len(files) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"distill.teacher_weights must be {len(files)} weights >= 0, one a teacher file "
                             f"and not all 0, got {weights}")
        if self.kind not in KINDS:
            raise ValueError(f"distill.kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"distill.weight must be in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")

    def files(self) -> list[str]:
        """The teacher files, one or several."""
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)

    def shares(self) -> list[float]:
        """Each teacher file's share of the ensemble's probabilities (summing to 1)."""
        weights = self.teacher_weights or [1.0] * len(self.files())
        return [w / sum(weights) for w in weights]


def distill_loss(student: Tensor, teacher: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    """The teacher's term of the loss from float logits (B, K) of both (the teacher's may be
    log-probabilities: the same distribution)."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(-1))
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * t * t


def _load_member(path: str, class_names: list[str] | None, preprocess: Preprocess | None) -> nn.Module:
    """One teacher file, frozen, after checking its classes and normalization against the data."""
    try:
        model, record = load_teacher(path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DataError(f"model.distill.teacher: {exc}") from exc
    names = record.get("class_names")
    if class_names and names and list(names) != list(class_names):
        raise DataError(f"model.distill.teacher: {path}: its classes {names} are not the "
                        f"data's {list(class_names)}")
    spec = record.get("preprocess")
    if preprocess is not None and spec and (tuple(spec["mean"]), tuple(spec["std"])) != (
            tuple(preprocess.mean), tuple(preprocess.std)):
        raise DataError(f"model.distill.teacher: {path}: it was trained on images normalized "
                        f"with mean {spec['mean']} and std {spec['std']}, the data uses "
                        f"{list(preprocess.mean)} and {list(preprocess.std)}")
    return model.requires_grad_(False).eval()


class Teacher:
    """A frozen teacher, kept out of the student's modules (so out of its checkpoints, its
    EMA and its optimizer): loaded from ``config.teacher`` (one file or an ensemble) and
    checked against the data."""

    def __init__(self, config: Distill, class_names: list[str] | None, preprocess: Preprocess | None) -> None:
        self.config = config
        self.models = [_load_member(path, class_names, preprocess) for path in config.files()]
        self.log_shares: list[float] = torch.tensor(config.shares()).log().tolist()  # -inf for a 0 share

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Float log-probabilities (B, K) of the teacher's answer for normalized images
        (B, 3, H, W), on their device, in the autocast the student runs in: log sum_t
        share_t * mean over views of softmax(teacher_t(view)); the views are the image and,
        with ``flip_tta``, its mirror image."""
        images = images.contiguous(memory_format=torch.channels_last)
        views = [images, images.flip(-1)] if self.config.flip_tta else [images]
        terms = []  # (B, K) each: log(share_t / V) + log softmax, one per teacher and view
        for model, log_share in zip(self.models, self.log_shares, strict=True):
            if next(model.parameters()).device != images.device:
                model.to(images.device)
            for view in views:
                terms.append(model(view).float().log_softmax(-1) + log_share - math.log(len(views)))
        return torch.stack(terms).logsumexp(0)  # (T*V, B, K) -> (B, K)

    def loss(self, student: Tensor, images: Tensor) -> Tensor:
        """The teacher's term for the student's logits (B, K) on ``images``."""
        return distill_loss(student, self(images), self.config.kind, self.config.temperature)
