"""Every file format of the models: checkpoints in, models out, and safetensors written.
The only module that imports model classes in order to load them; the models know no
file formats.

A project checkpoint -- a Lightning ``.ckpt`` written by ``vit-train`` or a
``.safetensors`` file written by the project -- carries a record next to the weights.
Classifiers carry ``vit``:

    {"config": ViTConfig.to_dict(), "class_names": [...], "preprocess": Preprocess.to_dict(),
     "val_acc": float | None, "source": str}

translators carry ``seq2seq``:

    {"config": Seq2SeqConfig.to_dict(), "src_tokenizer": tokenizer JSON string,
     "tgt_tokenizer": JSON string or None (joint vocabulary), "val_bleu": float | None,
     "source": str}

In a ``.ckpt`` the record is ``checkpoint[key]`` and the weights are
``checkpoint["state_dict"]`` with the ``model.`` prefix; in ``.safetensors`` it is the JSON
metadata entry ``key``. A file without a ``vit`` record is read as a timm checkpoint
(:mod:`vit.timm_weights`).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .seq2seq import Seq2Seq, Seq2SeqConfig
from .timm_weights import read_state_dict, vit_from_timm
from .vit import ViT, ViTConfig

PREFIX = "model."
VIT_KEY, SEQ2SEQ_KEY = "vit", "seq2seq"
# translators written before the text encoder shared the ViT's Block called its attention
# ``self_attn`` (2026-11); their weights are renamed on load
_LEGACY_SEQ2SEQ = re.compile(r"^(model\.)?(encoder\.\d+\.)self_attn\.")


def read_checkpoint(path: str | Path, key: str = VIT_KEY) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state dict of the bare model, its ``key`` record -- ``vit`` for classifiers,
    ``seq2seq`` for translators -- or ``None`` for a foreign checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        record = json.loads(meta[key]) if key in meta else None
        return state, record
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: holds Python objects that safe loading refuses (weights_only=True); "
                         "load only checkpoints you trust, saved as plain tensors") from exc
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from exc
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        state = {k[len(PREFIX):]: v for k, v in obj["state_dict"].items() if k.startswith(PREFIX)}
        return state, obj[key]
    return read_state_dict(path), None


def load_vit(path: str | Path, **overrides: Any) -> tuple[ViT, dict[str, Any]]:
    """Load a ViT from a project checkpoint, project safetensors or a timm checkpoint.

    Returns the model in eval mode and its ``vit`` record (for timm files, a record with
    the inferred config and no class names).
    """
    state, record = read_checkpoint(path)
    if record is None:
        model = vit_from_timm(state, **overrides)
        record = {"config": model.config.to_dict(), "class_names": None, "preprocess": None,
                  "val_acc": None, "source": f"timm checkpoint {Path(path).name}"}
        return model.eval(), record
    config = ViTConfig(**{**record["config"], **overrides})
    model = ViT(config)
    model.load_state_dict(state, strict=True)
    return model.eval(), record


def save_vit(model: ViT, record: dict[str, Any], path: str | Path) -> None:
    """Write weights and the ``vit`` record to ``path`` atomically."""
    write_safetensors(model, record, path, key=VIT_KEY)


def load_seq2seq(path: str | Path) -> tuple[Seq2Seq, dict[str, Any]]:
    """Load a translation model from a ``vit-train`` Lightning ``.ckpt`` or a project
    ``.safetensors`` file. Returns the model in eval mode and its ``seq2seq`` record."""
    state, record = read_checkpoint(path, key=SEQ2SEQ_KEY)
    if record is None:
        raise ValueError(f"{path}: no '{SEQ2SEQ_KEY}' record; not a translation checkpoint")
    model = Seq2Seq(Seq2SeqConfig(**record["config"]))
    model.load_state_dict(_with_tied(model, upgrade_seq2seq_state(state)), strict=True)
    return model.eval(), record


def save_seq2seq(model: Seq2Seq, record: dict[str, Any], path: str | Path) -> None:
    """Write weights (shared matrices once) and the record to ``path`` atomically."""
    write_safetensors(model, {**record, "config": model.config.to_dict()}, path, key=SEQ2SEQ_KEY)


def average_checkpoints(paths: Sequence[str | Path]) -> tuple[str, torch.nn.Module, dict[str, Any]]:
    """The element-wise mean of the weights of several checkpoints of one model (its last
    epochs, say: checkpoint averaging). Returns the kind (``"vit"`` or ``"seq2seq"``), the
    model with the mean weights (eval mode) and the last checkpoint's record."""
    if not paths:
        raise ValueError("no checkpoints to average")
    kind = checkpoint_kind(paths[-1])
    last_state, record = read_checkpoint(paths[-1], key=kind)
    if kind == SEQ2SEQ_KEY:
        model: torch.nn.Module = Seq2Seq(Seq2SeqConfig(**record["config"]))
    else:
        model = ViT(ViTConfig(**record["config"]))
    template = model.state_dict()
    states = []
    for i, path in enumerate(paths):
        state, own = (last_state, record) if i == len(paths) - 1 else read_checkpoint(path, key=kind)
        if own is None:
            raise ValueError(f"{path}: not a {kind} checkpoint like {paths[-1]}")
        if kind == SEQ2SEQ_KEY:  # today's names, shared matrices under each of their names
            state = _with_tied(model, upgrade_seq2seq_state(state))
        if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in template.items()}:
            raise ValueError(f"{path}: its weights do not match those of {paths[-1]}")
        states.append(state)
    mean = {k: torch.stack([s[k].double() for s in states]).mean(dim=0).to(v.dtype)
            for k, v in template.items()}
    model.load_state_dict(mean, strict=True)
    names = ", ".join(Path(p).name for p in paths)
    record = {**record, "source": f"mean of {len(paths)} checkpoints ({names}) of {record.get('source')}"}
    return kind, model.eval(), record


def checkpoint_kind(path: str | Path) -> str:
    """``"seq2seq"`` for a translator checkpoint, ``"vit"`` for anything else (a classifier
    or a timm file). Reads the record only where the format allows (safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return SEQ2SEQ_KEY if SEQ2SEQ_KEY in (f.metadata() or {}) else VIT_KEY
    _, record = read_checkpoint(path, key=SEQ2SEQ_KEY)
    return SEQ2SEQ_KEY if record is not None else VIT_KEY


def legacy_seq2seq_name(name: str) -> str:
    """Today's name of a translator weight written under an earlier layout (or ``name``)."""
    return _LEGACY_SEQ2SEQ.sub(r"\1\2attn.", name)


def upgrade_seq2seq_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A translator state dict (with or without the ``model.`` prefix) under today's names."""
    return {legacy_seq2seq_name(k): v for k, v in state.items()}


def _with_tied(model: Seq2Seq, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fill in the keys of shared parameters that a deduplicated state dict left out."""
    own = model.state_dict()
    ptr_to_key: dict[int, str] = {}
    for k, v in own.items():
        ptr_to_key.setdefault(v.data_ptr(), k)
    out = dict(state)
    for k, v in own.items():
        first = ptr_to_key[v.data_ptr()]
        if k not in out and first in out:
            out[k] = out[first]
    return out


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
