"""Relevance maps of a PyTorch ViT: attention weights without gradients, and the
class-specific gradient-weighted rollout (Chefer, Gur & Wolf 2021).

The gradient of one class logit with respect to every layer's attention weights comes
straight from ``model(images, return_attention=True)`` and ``torch.autograd.grad`` -- no
hooks, nothing stashed on modules. The rollout arithmetic itself is numpy, shared with the
ONNX path: :func:`vit.rollout.gradient_weighted_rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .rollout import gradient_weighted_rollout
from .vit import ViT


def patch_grid(model: ViT, images: Tensor) -> tuple[int, int]:
    """The patch grid the model uses for ``images`` (B, C, H, W)."""
    p = model.config.patch_size
    h, w = images.shape[-2:]
    return (-(-h // p), -(-w // p))


def forward_with_attention(model: ViT, images: Tensor) -> tuple[Tensor, np.ndarray]:
    """logits (B, K) and attention weights as numpy (B, L, H, N, N), without gradients."""
    with torch.inference_mode():
        logits, weights = model(images, return_attention=True)
    return logits, torch.stack(weights, dim=1).float().numpy()  # (B, L, H, N, N)


def class_relevance(
    model: ViT,
    images: Tensor,
    classes: int | Sequence[int] | None = None,
    *,
    start_layer: int = 0,
) -> np.ndarray:
    """Gradient-weighted rollout for ``classes`` (one per image; default: the predicted
    class) -> relevance (B, Gh, Gw) of each patch for that class."""
    with torch.enable_grad():
        logits, weights = model(images, return_attention=True)  # (B, K), L x (B, H, N, N)
        if classes is None:
            index = logits.argmax(dim=-1)
        else:
            index = torch.as_tensor(classes, device=logits.device).reshape(-1).expand(logits.shape[0])
        # each image's logit depends only on its own attention, so one backward pass
        # through the sum gives every image its own gradients
        target = logits.gather(1, index[:, None]).sum()
        grads = torch.autograd.grad(target, weights)
    to_np = lambda ts: torch.stack([t.detach() for t in ts], dim=1).float().numpy()  # (B, L, H, N, N)
    return gradient_weighted_rollout(
        to_np(weights), to_np(grads), start_layer=start_layer,
        num_prefix_tokens=model.num_prefix_tokens, grid=patch_grid(model, images),
        pool=model.config.global_pool,
    )
