"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers")
and its gradient-weighted variant (Chefer, Gur & Wolf 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

numpy only: it serves attention weights from PyTorch (``w.numpy()``) and from ONNX
Runtime alike, so the serving path stays torch-free.

Shape letters: B batch, L layers, H heads, N tokens (P prefix tokens + Gh*Gw patches),
Gh/Gw patch grid.

Rollout, per image:
  1. fuse the heads of each layer (mean, max or min)              -> A_l (N, N)
  2. zero the weakest ``discard_ratio`` of each A_l's entries; the threshold is found per
     image and per layer, and the prefix tokens' self-attention entries (the class token's
     A[0, 0]) are never candidates -- as in the reference implementation of Gildenblat's
     vit-explain, so that the class token's own row always keeps mass
  3. add the identity for the residual path and renormalize every row to sum to 1
     (rows: a token's attention over the tokens it reads from; dividing by the
     column sums instead is a common bug)
  4. multiply through the layers from ``start_layer``: R = A_L ... A_start
  5. read the class token's row of R over the patch tokens ("token" pooling), or the
     mean of the patch tokens' rows ("avg" pooling, models without a class token)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")
POOLS = ("token", "avg")


def stack_layers(weights: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(B, L, H, N, N) array, or a sequence of L arrays (B, H, N, N) -> float64 (B, L, H, N, N)."""
    if isinstance(weights, np.ndarray):
        w = weights
    else:
        if len(weights) == 0:
            raise ValueError("attention weights: got an empty sequence of layers")
        w = np.stack([np.asarray(layer) for layer in weights], axis=1)  # (B, L, H, N, N)
    if w.ndim != 5 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"attention weights must have shape (B, L, H, N, N), got {w.shape}")
    return w.astype(np.float64, copy=False)


def infer_grid(num_tokens: int, num_prefix_tokens: int) -> tuple[int, int]:
    """The square patch grid of ``num_tokens - num_prefix_tokens`` patches."""
    patches = num_tokens - num_prefix_tokens
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise ValueError(
            f"{patches} patch tokens do not form a square grid: pass grid=(Gh, Gw)"
        )
    return side, side


def _check_layout(num_tokens: int, num_prefix_tokens: int, grid: tuple[int, int] | None,
                  pool: str | None) -> tuple[tuple[int, int], str]:
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    grid = infer_grid(num_tokens, num_prefix_tokens) if grid is None else (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] + num_prefix_tokens != num_tokens:
        raise ValueError(
            f"grid {grid} plus {num_prefix_tokens} prefix tokens does not match the "
            f"{num_tokens} tokens of the attention weights"
        )
    if pool is None and num_prefix_tokens > 1:
        raise ValueError(f"{num_prefix_tokens} prefix tokens (a class token and registers, or registers "
                         "alone) do not say how the model reads its output: pass pool='token' or 'avg'")
    pool = pool or ("token" if num_prefix_tokens == 1 else "avg")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "token" and num_prefix_tokens == 0:
        raise ValueError("pool='token' needs a class token (num_prefix_tokens >= 1)")
    return grid, pool


def fuse_heads(weights: np.ndarray, head_fusion: str = "mean") -> np.ndarray:
    """(..., H, N, N) -> (..., N, N) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return weights.mean(axis=-3)
    if head_fusion == "max":
        return weights.max(axis=-3)
    if head_fusion == "min":
        return weights.min(axis=-3)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_weakest(attn: np.ndarray, discard_ratio: float, num_prefix_tokens: int = 1) -> np.ndarray:
    """Zero the ``floor(discard_ratio * candidates)`` smallest entries of every (N, N) matrix.

    attn (..., N, N); each matrix has its own threshold (batch-safe). Candidates are all
    entries except the prefix tokens' self-attention (p, p), p < ``num_prefix_tokens``.
    Ties are broken by position (a stable sort), so exactly that many entries are zeroed.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    n = attn.shape[-1]
    protected = np.zeros((n, n), dtype=bool)
    idx = np.arange(min(num_prefix_tokens, n))
    protected[idx, idx] = True
    candidates = np.flatnonzero(~protected.ravel())  # (C,)
    k = int(discard_ratio * candidates.size)
    if k == 0:
        return attn
    flat = attn.reshape(-1, n * n).copy()  # (M, N*N), one row per matrix
    order = np.argsort(flat[:, candidates], axis=-1, kind="stable")[:, :k]  # (M, k)
    np.put_along_axis(flat, candidates[order], 0.0, axis=-1)
    return flat.reshape(attn.shape)


def add_residual(attn: np.ndarray) -> np.ndarray:
    """A + I, every row renormalized to sum to 1: (..., N, N) -> (..., N, N)."""
    a = attn + np.eye(attn.shape[-1])
    return a / a.sum(axis=-1, keepdims=True)


def _joint(fused: np.ndarray) -> np.ndarray:
    """Head-fused weights (B, L, N, N) -> R = (A_L + I) ... (A_1 + I), rows renormalized,
    (B, N, N): row i is how token i's final state draws on the input tokens."""
    return _product(add_residual(fused))


def _product(layers: np.ndarray) -> np.ndarray:
    """Row-stochastic mixing per layer (B, L, N, N) -> M_L ... M_1 (B, N, N)."""
    joint = layers[:, 0]  # (B, N, N)
    for layer in range(1, layers.shape[1]):
        joint = layers[:, layer] @ joint  # (B, N, N)
    return joint


def _read_map(joint: np.ndarray, num_prefix_tokens: int, grid: tuple[int, int], pool: str) -> np.ndarray:
    """joint (B, N, N) relevance of tokens -> (B, Gh, Gw) over the patch tokens."""
    patches = joint[:, :, num_prefix_tokens:]  # (B, N, Gh*Gw)
    if pool == "token":
        scores = patches[:, 0]  # (B, Gh*Gw): the class token's row
    else:
        scores = patches[:, num_prefix_tokens:].mean(axis=1)  # (B, Gh*Gw): mean of patch rows
    return scores.reshape(-1, *grid)  # (B, Gh, Gw)


def attention_rollout(
    weights: np.ndarray | Sequence[np.ndarray],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    pool: str | None = None,
) -> np.ndarray:
    """Attention rollout of ``weights`` (B, L, H, N, N) -> relevance (B, Gh, Gw) of each patch.

    ``pool`` is how the model reads its output: "token" (the class token; the default when
    there is one prefix token) or "avg" (mean of patch tokens; the default without one);
    required with several prefix tokens (registers), which say nothing of the readout.
    ``grid`` defaults to a square grid. Values are raw relevances (not rescaled).
    """
    w = stack_layers(weights)
    b, depth, _, n, _ = w.shape
    if not 0 <= start_layer < depth:
        raise ValueError(f"start_layer must be in [0, {depth - 1}], got {start_layer}")
    grid, pool = _check_layout(n, num_prefix_tokens, grid, pool)
    fused = fuse_heads(w[:, start_layer:], head_fusion)  # (B, L', N, N)
    joint = _joint(discard_weakest(fused, discard_ratio, num_prefix_tokens))  # (B, N, N)
    return _read_map(joint, num_prefix_tokens, grid, pool)


def contribution_rollout(
    contributions: np.ndarray,
    token_logits: np.ndarray | None = None,
    *,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    pool: str | None = None,
) -> np.ndarray:
    """Rollout of measured contributions (ALTI, Ferrando et al. 2022) -> relevance (B, Gh, Gw).

    ``contributions`` (B, L, N, N): each block's token-to-token contributions, residual path
    included and rows summing to 1 (:func:`vit.relevance.forward_with_contributions`, or the
    ONNX output of that name); they are multiplied through the blocks as rollout multiplies
    attention, with no head fusion and no added identity. Read as :func:`attention_rollout`
    reads, except that an average-pooling model given its ``token_logits`` (B, Gh*Gw, K)
    weighs each final token by how much it moves the logits -- the norm of its share of
    them, centred over the classes (softmax ignores a shift common to all classes) -- which
    is the readout's own contribution, instead of 1/n each. Class-agnostic, like rollout."""
    c = np.asarray(contributions, dtype=np.float64)
    if c.ndim != 4 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"contributions must have shape (B, L, N, N), got {c.shape}")
    b, _, n, _ = c.shape
    grid, pool = _check_layout(n, num_prefix_tokens, grid, pool)
    joint = _product(c)  # (B, N, N)
    if pool != "avg" or token_logits is None:
        return _read_map(joint, num_prefix_tokens, grid, pool)
    shares = np.asarray(token_logits, dtype=np.float64)
    p = num_prefix_tokens
    if shares.ndim != 3 or shares.shape[:2] != (b, n - p):
        raise ValueError(f"token_logits must have shape ({b}, {n - p}, K), got {shares.shape}")
    reach = np.linalg.norm(shares - shares.mean(axis=2, keepdims=True), axis=2)  # (B, Gh*Gw)
    reach = reach / np.maximum(reach.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    scores = np.einsum("bi,bij->bj", reach, joint[:, p:, p:])  # (B, Gh*Gw)
    return scores.reshape(-1, *grid)  # (B, Gh, Gw)


def raw_attention(
    weights: np.ndarray | Sequence[np.ndarray],
    layer: int,
    head: int | None = None,
    *,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    pool: str | None = None,
) -> np.ndarray:
    """One layer's attention to the patches -> (B, Gh, Gw): head ``head``, or the mean over
    heads when ``head`` is None; read as in :func:`attention_rollout`. Negative indices count
    from the end."""
    w = stack_layers(weights)
    _, depth, heads, n, _ = w.shape
    if not -depth <= layer < depth:
        raise ValueError(f"layer must be in [0, {depth - 1}], got {layer}")
    if head is not None and not -heads <= head < heads:
        raise ValueError(f"head must be in [0, {heads - 1}] or None (mean), got {head}")
    grid, pool = _check_layout(n, num_prefix_tokens, grid, pool)
    attn = w[:, layer].mean(axis=1) if head is None else w[:, layer, head]  # (B, N, N)
    return _read_map(attn, num_prefix_tokens, grid, pool)


def gradient_weighted_rollout(
    weights: np.ndarray | Sequence[np.ndarray],
    grads: np.ndarray | Sequence[np.ndarray],
    *,
    start_layer: int = 0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    pool: str | None = None,
) -> np.ndarray:
    """Class-specific relevance (Chefer et al. 2021): per layer the positive part of
    grad * attention averaged over heads, Ā_l = E_h[(∇A_l ⊙ A_l)^+]; then R = I and
    R <- R + Ā_l R through the layers, i.e. the product of (I + Ā_l). ``grads`` are the
    gradients of the chosen class logit with respect to ``weights``, same shape.
    Returns (B, Gh, Gw)."""
    w, g = stack_layers(weights), stack_layers(grads)
    if w.shape != g.shape:
        raise ValueError(f"grads {g.shape} must have the shape of weights {w.shape}")
    b, depth, _, n, _ = w.shape
    if not 0 <= start_layer < depth:
        raise ValueError(f"start_layer must be in [0, {depth - 1}], got {start_layer}")
    grid, pool = _check_layout(n, num_prefix_tokens, grid, pool)
    cam = np.clip(g * w, 0.0, None).mean(axis=2)  # (B, L, N, N)
    joint = np.broadcast_to(np.eye(n), (b, n, n)).copy()  # (B, N, N)
    for layer in range(start_layer, depth):
        joint = joint + cam[:, layer] @ joint  # (B, N, N)
    return _read_map(joint, num_prefix_tokens, grid, pool)


def class_rollout(
    weights: np.ndarray | Sequence[np.ndarray],
    token_logits: np.ndarray,
    classes: int | Sequence[int] | None,
    *,
    num_prefix_tokens: int = 0,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """Class-specific relevance without gradients, for average-pooling models: each final
    token's exact share of the class logit (``token_logits`` (B, Gh*Gw, K), from
    :func:`vit.relevance.token_logits` or the ONNX output of that name), carried back to
    the input patches along attention rollout's flows (rows of R = prod (A_l + I), row
    normalized, heads averaged). R's rows sum to 1, so the map sums to the class logit
    minus the head's constant offset: positive where patches raise the class, negative
    where they argue against it. ``classes``: one index, or one per image -> (B, Gh, Gw);
    ``None``: every class -> (B, K, Gh, Gw), for the price of one."""
    w = stack_layers(weights)
    b, _, _, n, _ = w.shape
    grid, _ = _check_layout(n, num_prefix_tokens, grid, "avg")
    shares = np.asarray(token_logits, dtype=np.float64)
    if shares.ndim != 3 or shares.shape[:2] != (b, n - num_prefix_tokens):
        raise ValueError(f"token_logits must have shape ({b}, {n - num_prefix_tokens}, K), "
                         f"got {shares.shape}")
    if classes is not None:
        index = np.broadcast_to(np.asarray(classes, dtype=np.int64).reshape(-1), (b,))
        if (index < 0).any() or (index >= shares.shape[2]).any():
            raise ValueError(f"class index out of range [0, {shares.shape[2] - 1}]: {index.tolist()}")
        shares = shares[np.arange(b), :, index][:, :, None]  # (B, Gh*Gw, 1): each image's class
    p = num_prefix_tokens
    patches = _joint(fuse_heads(w))[:, p:, p:]  # (B, Gh*Gw, Gh*Gw)
    maps = np.einsum("bik,bij->bkj", shares, patches).reshape(b, -1, *grid)  # (B, K or 1, Gh, Gw)
    return maps if classes is None else maps[:, 0]


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Rescale each map of (..., Gh, Gw) to [0, 1] (min-max per map; a flat map becomes 0)."""
    maps = np.asarray(maps, dtype=np.float64)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0)
