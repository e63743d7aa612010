"""The one attention core of the project: multi-head scaled dot-product attention.

Serves ViT self-attention, text-encoder self-attention, decoder causal self-attention
and cross-attention (Vaswani et al. 2017, section 3.2).

Shape letters: B batch, H heads, Tq query length, Tk key length, D model width,
Dh head width (D // H), P cached (past) length.

Mask convention (the only one in the project): a boolean mask where ``True`` means
"may attend", broadcastable to (B, H, Tq, Tk) -- the meaning of
``F.scaled_dot_product_attention``. Note that ``nn.MultiheadAttention``'s boolean
masks mean the opposite (``True`` = blocked). A floating-point mask is added to the
scores instead. Build masks with :func:`padding_mask` and :func:`causal_mask`.

Nothing is stored on the module between calls: attention weights and the KV cache are
return values, and the cache is passed back in explicitly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache(NamedTuple):
    """Projected keys and values, each (B, H, T, Dh)."""

    key: Tensor
    value: Tensor


class Attended(NamedTuple):
    """What :class:`MultiHeadAttention` returns.

    ``x`` is (B, Tq, D); ``weights`` is (B, H, Tq, Tk) when asked for, else ``None``;
    ``cache`` is the updated :class:`KVCache` when ``use_cache`` was set, else ``None``.
    """

    x: Tensor
    weights: Tensor | None
    cache: KVCache | None


def padding_mask(keep: Tensor) -> Tensor:
    """Key-padding mask (B, 1, 1, Tk), ``True`` where a key may be attended.

    ``keep`` is a boolean (B, Tk) tensor, ``True`` for real tokens, e.g. ``ids != pad_id``.
    """
    if keep.dtype != torch.bool or keep.dim() != 2:
        raise ValueError(
            f"padding_mask expects a boolean (B, Tk) keep-mask, got {keep.dtype} "
            f"{tuple(keep.shape)}"
        )
    return keep[:, None, None, :]  # (B, 1, 1, Tk)


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Causal mask (Tq, Tk), ``True`` where query i may see key j.

    Queries are the last ``q_len`` positions of the ``k_len`` keys (bottom-right
    alignment), which is what incremental decoding with a KV cache needs.
    """
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset  # (Tq, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
    return k_pos <= q_pos  # (Tq, Tk)


def scaled_dot_product(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The explicit path, and the only place in the project where attention scores and their
    softmax are computed: softmax(q k^T / sqrt(Dh) + mask) v, returning the weights.

    q (B, H, Tq, Dh), k and v (B, H, Tk, Dh) -> out (B, H, Tq, Dh), weights (B, H, Tq, Tk).
    The scores are divided after the product: the pattern onnxruntime's attention fusion
    recognises in an exported graph.
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return dropped @ v, weights  # (B, H, Tq, Dh), (B, H, Tq, Tk)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a fused q/k/v projection for self-attention.

    ``cross=False``: self-attention; ``x`` gives queries, keys and values through one
    ``qkv`` linear layer (timm's layout). ``cross=True``: queries from ``x`` through ``q``,
    keys and values from ``context`` through ``kv``.

    Two per-instance settings, set for a whole model with :func:`configure_attention`:
    ``fused`` (default True) runs ``F.scaled_dot_product_attention`` unless weights are
    asked for; False always takes the explicit path (:func:`scaled_dot_product`), which is
    faster than PyTorch's fused CPU kernels for training at ViT and sentence lengths.
    ``split_qkv`` (default False) is an export-time layout: q, k and v are projected by
    three slices of the ``qkv`` weight and attention takes the explicit path -- the graph
    onnxruntime's transformer optimizer fuses into its ``Attention`` operator. Same weights,
    same function.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        cross: bool = False,
        context_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = True
        self.split_qkv = False

    def _heads(self, t: Tensor, n: int) -> Tensor:
        # (B, T, n*D) -> (n, B, H, T, Dh)
        b, t_len, _ = t.shape
        return t.view(b, t_len, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _self_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (B, H, T, Dh) of self-attention."""
        if not self.split_qkv:
            q, k, v = self._heads(self.qkv(x), 3)
            return q, k, v
        b, t_len, dim = x.shape
        bias = self.qkv.bias
        out = []
        for i in range(3):
            part = slice(i * dim, (i + 1) * dim)
            y = F.linear(x, self.qkv.weight[part], None if bias is None else bias[part])  # (B, T, D)
            out.append(y.view(b, t_len, self.num_heads, self.head_dim).transpose(1, 2))  # (B, H, T, Dh)
        return out[0], out[1], out[2]

    def head_outputs(self, x: Tensor) -> Tensor:
        """Self-attention only: every head's values carried through that head's slice of the
        output projection, (B, H, T, D) for ``x`` (B, T, D) -- the vectors the attention
        weights mix. The layer's output is exactly sum_h weights[:, h] @ head_outputs[:, h]
        plus the projection's bias (Kobayashi et al. 2020, "Attention is Not Only a Weight")."""
        if self.cross:
            raise ValueError("head_outputs applies to self-attention layers only")
        _, _, v = self._self_qkv(x)  # (B, H, T, Dh)
        weight = self.proj.weight.view(-1, self.num_heads, self.head_dim)  # (D, H, Dh)
        return torch.einsum("bhtk,dhk->bhtd", v, weight)  # (B, H, T, D)

    def project_context(self, context: Tensor) -> KVCache:
        """Cross-attention only: the context's projected keys and values (B, H, Tk, Dh),
        to pass back as ``cache`` on every later call."""
        if not self.cross:
            raise ValueError("project_context applies to cross-attention layers only")
        k, v = self._heads(self.kv(context), 2)  # (B, H, Tk, Dh) each
        return KVCache(k, v)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_attention: bool = False,
    ) -> Attended:
        """Attend from ``x`` (B, Tq, D) to itself or to ``context`` (B, Tk, Dc).

        mask: boolean (``True`` = may attend) or additive float, broadcastable to
            (B, H, Tq, Tk).
        causal: add the causal mask (self-attention only).
        cache: for self-attention, past keys/values (B, H, P, Dh) to which this call's
            are appended; for cross-attention, the context's projected keys/values,
            reused instead of projecting ``context`` again (``context`` may be ``None``).
        use_cache: return the (updated) cache.
        return_attention: take the explicit path and return weights (B, H, Tq, Tk).
        """
        b, q_len, _ = x.shape
        if self.cross:
            q = self._heads(self.q(x), 1)[0]  # (B, H, Tq, Dh)
            if cache is not None:
                k, v = cache
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context or a cache")
                k, v = self.project_context(context)
            if causal:
                raise ValueError("causal masking applies to self-attention only")
        else:
            if context is not None:
                raise ValueError("self-attention got a context; build the layer with cross=True")
            q, k, v = self._self_qkv(x)  # (B, H, Tq, Dh) each
            if cache is not None:
                k = torch.cat([cache.key, k], dim=2)  # (B, H, P + Tq, Dh)
                v = torch.cat([cache.value, v], dim=2)
        new_cache = KVCache(k, v) if use_cache else None

        k_len = k.shape[2]
        explicit = return_attention or not self.fused or self.split_qkv
        is_causal = False
        if causal and q_len > 1:
            if mask is None and k_len == q_len and not explicit:
                is_causal = True  # SDPA's own causal kernel
            else:
                mask = _with_causal(mask, causal_mask(q_len, k_len, x.device))

        drop = self.attn_drop if self.training else 0.0
        if explicit:
            out, weights = scaled_dot_product(q, k, v, mask, dropout_p=drop)
            weights = weights if return_attention else None
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=drop, is_causal=is_causal
            )  # (B, H, Tq, Dh)
            weights = None
        out = out.transpose(1, 2).reshape(b, q_len, -1)  # (B, Tq, D)
        return Attended(self.proj_drop(self.proj(out)), weights, new_cache)


def configure_attention(model: nn.Module, *, fused: bool | None = None,
                        split_qkv: bool | None = None) -> None:
    """Set ``fused`` and/or ``split_qkv`` (see :class:`MultiHeadAttention`) on every
    attention layer of ``model``; ``None`` leaves a setting as it is."""
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            if fused is not None:
                module.fused = fused
            if split_qkv is not None and not module.cross:  # cross-attention has no qkv to split
                module.split_qkv = split_qkv


def _with_causal(mask: Tensor | None, causal: Tensor) -> Tensor:
    """Merge a causal (Tq, Tk) boolean mask into a boolean or additive mask."""
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))
