"""Vision Transformer (Dosovitskiy et al. 2021), written from scratch on the project's
attention core, with timm's parameter names so that timm weights map one to one.

Shape letters: B batch, C channels, H/W image height/width, p patch size,
Gh/Gw patch grid, N tokens (prefix + Gh*Gw), D width, L layers, Hd heads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .layers import Block


@dataclass
class ViTConfig:
    """Everything that defines a ViT's architecture. Plain values only (YAML/JSON safe)."""

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    # register tokens (Darcet et al. 2024, "Vision Transformers Need Registers"): learned
    # tokens after the class token that no output reads, where the model can keep global
    # state instead of overwriting low-information patches (the artefacts in their maps)
    reg_tokens: int = 0
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens)
    fc_norm: bool | None = None  # norm after pooling instead of before; None: True for "avg"
    no_embed_class: bool = False  # position embeddings cover patch tokens only
    layer_scale_init: float | None = None  # e.g. 1e-5 enables LayerScale
    norm_eps: float = 1e-6
    drop_rate: float = 0.0  # dropout before the head and after position embeddings
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over depth
    dynamic_img_pad: bool = False  # pad images whose size is not a multiple of patch_size
    stem: str = "patch"  # "patch" (one p x p strided conv, as timm) or "conv" (see ConvStem)
    stem_width: int = 64  # channels of the conv stem's inner stages
    # max-pool window of the conv stem: 4 centres every token on its p x p patch; 3 (CCT's
    # choice, the default so that earlier checkpoints load unchanged) shifts the token grid
    # up-left by (p - 1)/2 pixels and biases attention towards the bottom and right edges
    stem_pool: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        h, w = self.grid_size  # validates image_size
        if self.patch_size <= 0:
            raise ConfigError(f"ViTConfig.patch_size must be positive, got {self.patch_size}")
        if not self.dynamic_img_pad and (h * self.patch_size, w * self.patch_size) != self.image_hw:
            raise ConfigError(
                f"ViTConfig.image_size {self.image_hw} is not divisible by patch_size "
                f"{self.patch_size} (set dynamic_img_pad=True to pad)"
            )
        if self.dim % self.num_heads != 0:
            raise ConfigError(
                f"ViTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"ViTConfig.stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(
                f"ViTConfig.stem='conv' needs a power-of-two patch_size >= 2, got {self.patch_size}"
            )
        if self.stem_pool not in (3, 4):
            raise ConfigError(f"ViTConfig.stem_pool must be 3 or 4, got {self.stem_pool}")
        if self.global_pool not in ("token", "avg"):
            raise ConfigError(f"ViTConfig.global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("ViTConfig.global_pool='token' needs class_token=True")
        if self.reg_tokens < 0:
            raise ConfigError(f"ViTConfig.reg_tokens must be >= 0, got {self.reg_tokens}")
        for name in ("depth", "num_heads", "dim", "in_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ViTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"ViTConfig.num_classes must be >= 0, got {self.num_classes}")

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        if isinstance(s, int):
            return (s, s)
        if len(s) != 2:
            raise ConfigError(f"ViTConfig.image_size must be an int or (height, width), got {s!r}")
        return (int(s[0]), int(s[1]))

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_hw
        return (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, then the registers."""
        return (1 if self.class_token else 0) + self.reg_tokens

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        return d


def _check_images(x: Tensor, in_channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected images of shape (B, {in_channels}, H, W), got {tuple(x.shape)}")


def _tokens(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Feature map (B, D, Gh, Gw) -> tokens (B, Gh*Gw, D) and the grid (Gh, Gw)."""
    return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D-dim tokens through one strided convolution."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, *, pad: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.pad = pad
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        _check_images(x, self.in_channels)
        p = self.patch_size
        h, w = x.shape[-2:]
        if h % p or w % p:
            if not self.pad:
                raise ValueError(
                    f"image size {h}x{w} is not divisible by patch size {p} "
                    "(build the model with dynamic_img_pad=True to pad)"
                )
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        return _tokens(self.proj(x))  # (B, D, Gh, Gw) -> (B, Gh*Gw, D)


class ConvStem(nn.Module):
    """Convolutional tokenizer (Hassani et al. 2021, "Escaping the Big Data Paradigm with
    Compact Transformers"): log2(p) stages of 3x3 conv -> ReLU -> k x k max-pool with stride 2,
    so that it yields the same Gh x Gw token grid as p x p patches, from overlapping,
    locally mixed pixels. Learns far faster than patches on small datasets.

    ``pool=4`` (windows [2i-1, 2i+2], centred on 2i + 0.5) keeps each token centred on its
    patch, as a p x p patch is. ``pool=3`` (CCT's windows [2i-1, 2i+1]) centres token i on
    pixel p*i instead of p*i + (p-1)/2, so the bottom and right tokens see more of the image
    than the top and left ones; models trained with it attend to the bottom edge whatever
    the image (benchmarks/README.md, "Edge bias of the conv tokenizer")."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, width: int = 64, pool: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        stages = patch_size.bit_length() - 1
        channels = [in_channels] + [width] * (stages - 1) + [dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(),
                       nn.MaxPool2d(pool, stride=2, padding=1, ceil_mode=pool == 4)]
        self.convs = nn.Sequential(*layers)
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        _check_images(x, self.in_channels)
        x = self.convs(x.contiguous(memory_format=torch.channels_last))  # (B, D, ceil(H/p), ceil(W/p))
        return _tokens(x)  # (B, Gh*Gw, D)


def resample_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic (antialiased, as timm does) resize of patch position embeddings.

    pos (1, Gh*Gw, D) on ``old_grid`` -> (1, Gh'*Gw', D) on ``new_grid``.
    """
    if old_grid == new_grid:
        return pos
    dim = pos.shape[-1]
    grid = pos.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # (1, D, Gh, Gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)  # (1, Gh'*Gw', D)


class ViT(nn.Module):
    """Vision Transformer classifier.

    ``model(images)`` -> logits (B, num_classes);
    ``model(images, return_attention=True)`` -> (logits, weights), where ``weights`` is a
    tuple of L tensors (B, Hd, N, N), one per block, each row summing to 1.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.grid_size = cfg.grid_size
        self.num_prefix_tokens = cfg.num_prefix_tokens
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.patch_size, cfg.in_channels, cfg.dim, cfg.stem_width,
                                                      cfg.stem_pool)
        else:
            self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.dim, pad=cfg.dynamic_img_pad)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, cfg.dim)) if cfg.reg_tokens else None
        n_pos = self.grid_size[0] * self.grid_size[1] + (0 if cfg.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.randn(1, n_pos, cfg.dim) * 0.02)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.num_heads, mlp_hidden=int(cfg.dim * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias,
                  attn_drop=cfg.attn_drop_rate, proj_drop=cfg.proj_drop_rate, drop_path=rate,
                  layer_scale_init=cfg.layer_scale_init, norm_eps=cfg.norm_eps)
            for rate in rates
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if not cfg.use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm-style init: truncated normal (std 0.02) for linear layers and tokens."""
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Prepend the class token and the registers and add position embeddings, in the
        dtype of the stem's output ``x``: under bf16 autocast the token stream stays bf16
        from here on (as in Megatron's bf16 training) instead of being promoted to float32
        by the float32 parameters and cast back before every linear layer. No change in
        float32."""
        cfg = self.config
        n_prefix = 0 if cfg.no_embed_class else self.num_prefix_tokens
        pos_embed = self.pos_embed.to(x.dtype)
        pos_prefix, pos = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
        pos = resample_pos_embed(pos, self.grid_size, grid)  # (1, Gh*Gw, D)
        prefix = [t.to(x.dtype).expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token)
                  if t is not None]  # (B, 1, D) class token, (B, R, D) registers
        if not prefix:
            return x + pos
        if cfg.no_embed_class:
            return torch.cat([*prefix, x + pos], dim=1)  # (B, N, D)
        x = torch.cat([*prefix, x], dim=1)  # (B, N, D)
        return x + torch.cat([pos_prefix, pos], dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) -> the token stream the first block reads (B, N, D): the
        patch tokens after the prefix tokens, with position embeddings."""
        x, grid = self.patch_embed(images)  # (B, Gh*Gw, D)
        return self.pos_drop(self._pos_embed(x, grid))  # (B, N, D)

    def forward_features(
        self, images: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """images (B, C, H, W) -> tokens (B, N, D) after the final norm, and attention
        weights per block (an empty tuple unless ``return_attention``)."""
        x = self.embed(images)  # (B, N, D)
        weights = []
        for block in self.blocks:
            x, w, _ = block(x, return_attention=return_attention)
            if w is not None:
                weights.append(w)
        return self.norm(x), tuple(weights)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """tokens (B, N, D) -> logits (B, num_classes), or pooled features (B, D)."""
        if self.config.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        else:
            x = x[:, 0]  # (B, D)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(
        self, images: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        x, weights = self.forward_features(images, return_attention)
        logits = self.forward_head(x)
        return (logits, weights) if return_attention else logits

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes."""
        self.config.num_classes = num_classes
        self.head = nn.Linear(self.config.dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def set_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Rebuild the position embeddings for a new training resolution."""
        new = ViTConfig(**{**self.config.to_dict(), "image_size": image_size})
        n_prefix = 0 if new.no_embed_class else self.num_prefix_tokens
        pos = self.pos_embed.data
        resized = resample_pos_embed(pos[:, n_prefix:], self.grid_size, new.grid_size)
        self.pos_embed = nn.Parameter(torch.cat([pos[:, :n_prefix], resized], dim=1))
        self.config, self.grid_size = new, new.grid_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
