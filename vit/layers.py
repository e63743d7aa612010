"""Building blocks shared by the ViT and the text Transformer: the MLP, stochastic depth,
LayerScale and the Transformer block both encoders are made of.

Shape letters: B batch, T tokens, D width, H heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attended, KVCache, MultiHeadAttention


class Mlp(nn.Module):
    """Position-wise feed-forward network: fc1 -> activation -> dropout -> fc2 -> dropout.
    ``drop``: one rate for both dropouts, or (after the activation, after fc2)."""

    def __init__(
        self, dim: int, hidden_dim: int, *, activation: type[nn.Module] = nn.GELU,
        drop: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__()
        inner, outer = drop if isinstance(drop, tuple) else (drop, drop)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = activation()
        self.drop1 = nn.Dropout(inner)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(outer)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (Touvron et al. 2021, CaiT)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.to(x.dtype)  # keeps a bf16 stream bf16 (see ViT._pos_embed)


class Block(nn.Module):
    """Transformer block of self-attention and MLP, each a residual branch.

    Pre-norm (``norm_first=True``, ViT and the default text encoder):
    ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; post-norm (the 2017 paper):
    ``norm1(x + attn(x))``, then ``norm2(x + mlp(x))``. Each branch passes through
    LayerScale (when ``layer_scale_init`` is set) and stochastic depth (``drop_path``).

    ``proj_drop`` is the dropout on each branch's output (the paper's residual dropout);
    ``mlp_drop`` the dropout after the MLP's activation (timm's ViT uses ``proj_drop`` for
    both; the paper none). Parameter names follow timm (``norm1, attn, ls1, norm2, mlp, ls2``).
    A stack of these with ``causal=True`` and the KV cache is a decoder-only model.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_hidden: int,
        activation: type[nn.Module] = nn.GELU,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mlp_drop: float | None = None,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        norm_eps: float = 1e-6,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                       proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        inner = proj_drop if mlp_drop is None else mlp_drop
        self.mlp = Mlp(dim, mlp_hidden, activation=activation, drop=(inner, proj_drop))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_attention: bool = False,
    ) -> Attended:
        """x (B, T, D) -> :class:`Attended`: the block's output (B, T, D), the attention
        weights (B, H, T, P + T) when asked for, the updated cache when ``use_cache``.
        ``mask``, ``causal`` and ``cache`` are :class:`MultiHeadAttention`'s."""
        a = self.attend(x, mask=mask, causal=causal, cache=cache, use_cache=use_cache,
                        return_attention=return_attention)
        return Attended(self.feed_forward(a.x), a.weights, a.cache)

    def attend(self, x: Tensor, **attention: object) -> Attended:
        """The attention half: x (B, T, D) -> :class:`Attended` whose ``x`` is the residual
        stream after the attention branch (and ``norm1`` when post-norm); keyword arguments
        are :meth:`forward`'s."""
        h = self.norm1(x) if self.norm_first else x
        a = self.attn(h, **attention)
        x = x + self.drop_path1(self.ls1(a.x))
        if not self.norm_first:
            x = self.norm1(x)
        return Attended(x, a.weights, a.cache)

    def feed_forward(self, x: Tensor) -> Tensor:
        """The MLP half: the residual stream after :meth:`attend` (B, T, D) -> the block's output."""
        h = self.norm2(x) if self.norm_first else x
        x = x + self.drop_path2(self.ls2(self.mlp(h)))
        if not self.norm_first:
            x = self.norm2(x)
        return x
