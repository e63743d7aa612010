"""AdamW parameter groups and the learning-rate schedule for ViT training.

* No weight decay on norms, biases, ``pos_embed``, ``cls_token`` and ``reg_token`` (every 1-D tensor
  and the token tensors), as in DeiT/timm.
* Layer-wise lr decay (BEiT, Bao et al. 2022): block i of L gets ``lr * decay**(L + 1 - (i+1))``,
  the embeddings ``lr * decay**(L + 1)``, the final norm and head the full ``lr``.
* Schedules: linear warmup from 0, then cosine decay to ``min_lr``, stepped per optimizer
  step (:class:`WarmupCosine`); or the Transformer paper's inverse square root
  (:class:`WarmupInverseSqrt`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from vit.errors import ConfigError

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and head."""
    if name.startswith(("patch_embed.", "cls_token", "reg_token", "pos_embed")):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def param_groups(model: nn.Module, weight_decay: float, depth: int,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters of a ViT. Each group carries ``lr_scale``
    (layer decay, 1.0 without it), which multiplies the base lr."""
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in NO_DECAY_NAMES
        layer = layer_id(name, depth) if layer_decay is not None else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


class WarmupCosine:
    """lr factor at optimizer step ``step``: linear warmup over ``warmup_steps``, then cosine
    from 1 down to ``min_factor`` at ``total_steps``. A plain object, so that its state in a
    checkpoint is plain numbers."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps = max(0, min(warmup_steps, total_steps - 1))
        self.total_steps = total_steps
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupInverseSqrt:
    """lr factor at optimizer step ``step``: linear warmup, then ``sqrt(warmup / step)``
    (Vaswani et al. 2017, eq. 3, normalised to 1 at the end of warmup). Plain state."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = max(1, warmup_steps)

    def __call__(self, step: int) -> float:
        step += 1
        return min(step / self.warmup_steps, math.sqrt(self.warmup_steps / step))


def check_rates(**rates: float) -> None:
    """Learning rates must be positive numbers (``min_lr`` may be 0); a
    :class:`~vit.errors.ConfigError` names the field of the first that is not."""
    for name, value in rates.items():
        low_ok = value >= 0 if name.startswith("min_") else value > 0
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok):
            bound = ">= 0" if name.startswith("min_") else "> 0"
            raise ConfigError(f"model.{name} must be a number {bound}, got {value}")
