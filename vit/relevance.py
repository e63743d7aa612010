"""Relevance maps of a PyTorch ViT: attention weights without gradients, each patch
token's exact share of every class logit (:func:`token_logits`, no gradients, exported to
ONNX as the ``token_logits`` output), and the gradient-weighted rollout (Chefer, Gur &
Wolf 2021).

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

from .occlusion import SIZES, masked, occluded, occlusion_map
from .rise import NUM_MASKS, SEED, random_masks, rise_map
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


def forward_with_contributions(model: ViT, images: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """images (B, C, H, W) -> final tokens (B, N, D) (after ``model.norm``), attention
    weights per block, and every block's token-to-token contributions (B, L, N, N): row i
    is how much each token j makes up token i's residual stream after that block's
    attention, measured on the vectors (ALTI, Ferrando, Gallego & Costa-jussa 2022,
    "Measuring the Mixing of Contextual Information in the Transformer").

    Token i after the attention branch is y_i = sum_j T_i(x_j) + bias, with
    T_i(x_j) = [i = j] x_i + sum_h A_h[i, j] f_h(x_j) (f_h: the head's values through its
    slice of the output projection, :meth:`MultiHeadAttention.head_outputs`, and LayerScale);
    the contribution is max(0, |y_i|_1 - |y_i - T_i(x_j)|_1), rows normalized to sum to 1. So
    the residual path gets the share its vector actually has instead of rollout's fixed half,
    and a head's weight counts by the size of what it moves. Distances are Manhattan (L1), as
    in ALTI; on the CIFAR-10 model they rank patches better than Euclidean ones (deletion AUC
    -0.0069 +- 0.0019 paired over 500 held-out images, benchmarks/README.md). Pre-norm blocks
    only."""
    x = model.embed(images)  # (B, N, D)
    n = x.shape[1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)[None, :, :, None]  # (1, N, N, 1)
    weights, contributions = [], []
    for block in model.blocks:
        if not block.norm_first:
            raise ValueError("contributions are defined here for pre-norm blocks only")
        a = block.attend(x, return_attention=True)  # a.x: y (B, N, D), a.weights (B, H, N, N)
        moved = block.ls1(block.attn.head_outputs(block.norm1(x)))  # (B, H, N, D)
        parts = torch.einsum("bhij,bhjd->bijd", a.weights, moved) + eye * x[:, None]  # (B, N, N, D): T_i(x_j)
        y = a.x[:, :, None]  # (B, N, 1, D)
        c = (y.abs().sum(dim=-1) - (y - parts).abs().sum(dim=-1)).clamp(min=0.0)  # (B, N, N): L1 distances
        contributions.append(c / c.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(c.dtype).tiny))
        weights.append(a.weights)
        x = block.feed_forward(a.x)
    return model.norm(x), tuple(weights), torch.stack(contributions, dim=1)  # (B, L, N, N)


def token_logits(model: ViT, tokens: Tensor) -> Tensor:
    """Each patch token's share of every class logit, for average-pooling models:
    final tokens (B, N, D) (after ``model.norm``) -> (B, Gh*Gw, K), whose sum over tokens
    is ``logits - logit_offset(model)`` exactly.

    Why it is exact: the head reads LayerNorm(mean_i x_i). The centring is linear, so
    mean_i x_i - mu = mean_i (x_i - mu_i), and the scale 1/sigma is one number per image;
    with gamma, W and the bias b outside the sum,
    logit_k = sum_i W_k . (gamma * (x_i - mu_i)) / (n sigma)  +  W_k . beta + b_k.
    Without ``fc_norm`` (the norm before pooling) the share is simply W_k . x_i / n.
    Class-token models read one token, so they have no such split: ValueError.
    """
    if model.config.global_pool != "avg":
        raise ValueError("token_logits needs an average-pooling model (global_pool='avg'); "
                         "this one reads its class token")
    x = tokens[:, model.num_prefix_tokens:]  # (B, n, D)
    n = x.shape[1]
    head = model.head
    if not isinstance(head, torch.nn.Linear):
        raise ValueError("token_logits needs a classification head (num_classes > 0)")
    norm = model.fc_norm
    if isinstance(norm, torch.nn.LayerNorm):
        pooled = x.mean(dim=1, keepdim=True)  # (B, 1, D)
        sigma = torch.sqrt(pooled.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)  # (B, 1, 1)
        x = (x - x.mean(dim=-1, keepdim=True)) * norm.weight / sigma  # (B, n, D)
    return x @ head.weight.T / n  # (B, n, K)


def logit_offset(model: ViT) -> Tensor:
    """The part of every logit no token accounts for: W . beta + b (K,)."""
    norm, head = model.fc_norm, model.head
    beta = norm.bias if isinstance(norm, torch.nn.LayerNorm) else torch.zeros_like(head.weight[0])
    return head.weight @ beta + head.bias


def occlusion_relevance(model: ViT, images: Tensor, classes: int | Sequence[int],
                        sizes: Sequence[int] = SIZES) -> np.ndarray:
    """Occlusion maps (:mod:`vit.occlusion`) through PyTorch: images (B, C, H, W) and one
    class per image (or one for all) -> (B, Gh, Gw), the drop of the class logit when each
    patch and the windows around it are blanked (window ``sizes`` in patches; ``(1,)``: each
    patch alone). The ONNX path computes the same from the file alone
    (``OnnxClassifier.class_map``)."""
    grid = patch_grid(model, images)
    index = np.broadcast_to(np.asarray(classes, dtype=np.int64).reshape(-1), (images.shape[0],))
    maps = []
    with torch.inference_mode():
        for pixels, c in zip(images.float().numpy(), index, strict=True):
            logits = model(torch.from_numpy(pixels)[None])[0].numpy()  # (K,)
            copies = torch.from_numpy(occluded(pixels, grid, sizes=sizes))  # (W, C, H, W), W windows
            blanked = model(copies).numpy()  # (W, K)
            maps.append(occlusion_map(logits, blanked, int(c), grid, sizes))
    return np.stack(maps)  # (B, Gh, Gw)


def rise_relevance(model: ViT, images: Tensor, classes: int | Sequence[int], num_masks: int = NUM_MASKS,
                   seed: int = SEED) -> np.ndarray:
    """Random-mask relevance (:mod:`vit.rise`) through PyTorch: images (B, C, H, W) and one
    class per image (or one for all) -> (B, Gh, Gw), each patch's mean class logit shown
    minus blanked over ``num_masks`` half-blanked copies. The ONNX path computes the same
    from the file alone (``OnnxClassifier.class_map``)."""
    grid = patch_grid(model, images)
    index = np.broadcast_to(np.asarray(classes, dtype=np.int64).reshape(-1), (images.shape[0],))
    masks = random_masks(grid, num_masks, seed)  # (M, Gh, Gw)
    return np.stack([rise_map(rise_logits(model, pixels, masks), masks, int(c))
                     for pixels, c in zip(images.float().numpy(), index, strict=True)])  # (B, Gh, Gw)


def rise_logits(model: ViT, pixels: np.ndarray, masks: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The logits (M, K) of one preprocessed image (C, H, W) under ``masks`` (M, Gh, Gw) from
    :func:`vit.rise.random_masks`: what :func:`vit.rise.rise_map` reads every class's map from."""
    grid = patch_grid(model, torch.from_numpy(pixels))
    if masks.shape[1:] != grid:
        raise ValueError(f"masks: expected (M, {grid[0]}, {grid[1]}) for this model's patch grid, "
                         f"got {masks.shape}")
    copies = torch.from_numpy(masked(pixels, grid, masks))  # (M, C, H, W)
    with torch.inference_mode():
        return torch.cat([model(part) for part in copies.split(batch_size)]).float().numpy()  # (M, K)


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
