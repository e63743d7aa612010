"""One function turns a checkpoint into a model, for every consumer.

A project checkpoint -- a Lightning ``.ckpt`` written by ``vit-train`` or a
``.safetensors`` file written by the project -- carries a ``vit`` record:

    {"config": ViTConfig.to_dict(), "class_names": [...], "preprocess": Preprocess.to_dict(),
     "val_acc": float | None, "source": str}

In a ``.ckpt`` it is ``checkpoint["vit"]`` and the weights are ``checkpoint["state_dict"]``
with the ``model.`` prefix; in ``.safetensors`` it is the JSON metadata entry ``vit``.
Anything else is treated as a timm checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .vit import ViT, ViTConfig

PREFIX = "model."


def read_checkpoint(path: str | Path, key: str = "vit") -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state dict of the bare model, its ``key`` record -- ``vit`` for classifiers,
    ``seq2seq`` for translators -- or ``None`` for a foreign checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        record = json.loads(meta[key]) if key in meta else None
        return state, record
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from exc
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        state = {k[len(PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(PREFIX)}
        return state, obj[key]
    from .timm_weights import read_state_dict

    return read_state_dict(path), None


def load_vit(path: str | Path, **overrides: Any) -> tuple[ViT, dict[str, Any]]:
    """Load a ViT from a project checkpoint, project safetensors or a timm checkpoint.

    Returns the model in eval mode and its ``vit`` record (for timm files, a record with
    the inferred config and no class names).
    """
    state, record = read_checkpoint(path)
    if record is None:
        model = ViT.from_timm(state, **overrides)
        record = {"config": model.config.to_dict(), "class_names": None, "preprocess": None,
                  "val_acc": None, "source": f"timm checkpoint {Path(path).name}"}
        return model.eval(), record
    config = ViTConfig(**{**record["config"], **overrides})
    model = ViT(config)
    model.load_state_dict(state, strict=True)
    return model.eval(), record


def save_safetensors(model: ViT, record: dict[str, Any], path: str | Path) -> None:
    """Write weights and the ``vit`` record to ``path`` atomically."""
    write_safetensors(model, record, path, key="vit")


def write_safetensors(model: torch.nn.Module, record: dict[str, Any], path: str | Path, *, key: str) -> None:
    """Write ``model``'s weights (tied or shared tensors once) and ``record`` as the JSON
    metadata entry ``key`` to ``path`` atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # tied embedding: stored once, restored by the reader
            continue
        seen.add(v.data_ptr())
        state[k] = v.detach().contiguous().cpu()
    save_file(state, str(tmp), metadata={key: json.dumps(record)})
    tmp.replace(path)
