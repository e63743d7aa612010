"""Load timm ``VisionTransformer`` weights into :class:`vit.ViT` without importing timm.

The ViT uses timm's parameter names, so loading is a strict one-to-one copy: every key of
the timm state dict must be understood, or loading stops with an error naming the first
key it cannot map -- never a silently half-loaded model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .vit import ViT, ViTConfig

log = logging.getLogger(__name__)

# Keys the ViT knows, with the block index abstracted to N.
_KNOWN = re.compile(
    r"^(cls_token|reg_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|"
    r"fc_norm\.(weight|bias)|head\.(weight|bias)|"
    r"blocks\.\d+\.(norm1|norm2)\.(weight|bias)|blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)|"
    r"blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias)|blocks\.\d+\.(ls1|ls2)\.gamma)$"
)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: ``.safetensors``, or a torch file holding a state
    dict directly or under ``state_dict``/``model``/``state_dict_ema``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if all(isinstance(v, Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"{path}: not a state dict (top-level type {type(obj).__name__})")


def _source_to_state(source: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A state dict plus whatever config the source states outright (a timm module does)."""
    if isinstance(source, nn.Module):
        known: dict[str, Any] = {}
        blocks = getattr(source, "blocks", None)
        if blocks is not None and len(blocks) > 0:
            known["num_heads"] = blocks[0].attn.num_heads
            known["norm_eps"] = blocks[0].norm1.eps
        pool = getattr(source, "global_pool", None)
        if pool in ("token", "avg"):
            known["global_pool"] = pool
        if getattr(source, "no_embed_class", False):
            known["no_embed_class"] = True
        if getattr(source, "dynamic_img_pad", False):
            known["dynamic_img_pad"] = True
        return source.state_dict(), known
    if isinstance(source, (str, Path)):
        return read_state_dict(source), {}
    if isinstance(source, dict):
        return dict(source), {}
    raise TypeError(
        f"from_timm expects a timm VisionTransformer, a state dict or a checkpoint path, "
        f"got {type(source).__name__}"
    )


def infer_config(state: dict[str, Tensor], **overrides: Any) -> ViTConfig:
    """Read a ViTConfig off the tensors; ``overrides`` win over what is inferred."""
    for key in state:
        if not _KNOWN.match(key):
            raise ValueError(f"cannot map timm checkpoint key {key!r} onto vit.ViT")
    for required in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if required not in state:
            raise ValueError(f"timm checkpoint has no {required!r}: not a timm VisionTransformer")
    dim, in_channels, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    class_token = "cls_token" in state
    avg = "fc_norm.weight" in state
    cfg: dict[str, Any] = dict(
        patch_size=patch,
        in_channels=in_channels,
        dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),  # timm's ViTs use 64-wide heads; pass num_heads to override
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token=class_token,
        reg_tokens=state["reg_token"].shape[1] if "reg_token" in state else 0,
        global_pool="avg" if avg or not class_token else "token",
        fc_norm=avg,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        layer_scale_init=1.0 if "blocks.0.ls1.gamma" in state else None,
    )
    cfg.update(overrides)
    n_pos = state["pos_embed"].shape[1] if "pos_embed" in state else 0
    if "image_size" not in overrides and n_pos:
        n_prefix = int(class_token) + cfg["reg_tokens"]
        n_patches = n_pos - (0 if cfg.get("no_embed_class") else n_prefix)
        side = int(round(n_patches**0.5))
        if side * side != n_patches:
            raise ValueError(
                f"pos_embed has {n_patches} patch positions, not a square grid: pass image_size"
            )
        cfg["image_size"] = side * patch
    return ViTConfig(**cfg)


def vit_from_timm(source: Any, **overrides: Any) -> ViT:
    """Build a :class:`ViT` equal to the timm model or checkpoint ``source``."""
    state, known = _source_to_state(source)
    config = infer_config(state, **{**known, **overrides})
    model = ViT(config)
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise ValueError(f"timm checkpoint key {key!r} has no place in {config}")
        if expected[key].shape != value.shape:
            raise ValueError(
                f"timm checkpoint key {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"timm checkpoint lacks {missing[0]!r} (and {len(missing) - 1} more)")
    model.load_state_dict(state, strict=True)
    log.info("loaded timm weights: %s", config)
    return model
