"""What an exported ONNX file says about itself: the ``metadata_props`` contract.

Torch-free (reads with ``onnx`` or from an onnxruntime session). Every value is JSON
under a ``vit.``-prefixed key, so any ONNX tool can show it and any language can parse it:

    vit.format           1 (bumped when the layout below changes)
    vit.class_names      ["airplane", ...]
    vit.input_size       [H, W] the network input (= preprocess crop)
    vit.preprocess       Preprocess.to_dict(): resize/crop/interpolation/mean/std
    vit.config           ViTConfig.to_dict()
    vit.num_prefix_tokens  1 (class token) or 0
    vit.grid_size        [Gh, Gw] patch grid; N = num_prefix_tokens + Gh*Gw
    vit.outputs          ["logits"], or "logits", "attention", "token_logits" (average pooling)
                         and "contributions" (files from December 2026 on; older ones lack it)
    vit.source           {"checkpoint": path, "exported_at": ISO date, "record_source": str}
    vit.val_acc          float or null
    vit.variant          "fp32", "fp32-optimized", "int8", "fp16"
    vit.gate             null, or the parity gate's record (export/gate.py): per backend and
                         precision its agreement with onnxruntime fp32 and whether it passed
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "vit."
FORMAT_VERSION = 1
OPSET = 18  # of every file the exporters write
SEQ2SEQ_FILES = ("encoder.onnx", "decoder.onnx", "seq2seq.json")  # an exported translator's folder


@dataclass
class ModelMetadata:
    """The metadata of one exported file (see the module docstring for the keys)."""

    class_names: list[str]
    input_size: list[int]
    preprocess: dict[str, Any]
    config: dict[str, Any]
    num_prefix_tokens: int
    grid_size: list[int]
    outputs: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    val_acc: float | None = None
    variant: str = "fp32"
    gate: dict[str, Any] | None = None
    format: int = FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        """``{"vit.<field>": json}`` for ``ModelProto.metadata_props``."""
        return {PREFIX + f.name: json.dumps(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> ModelMetadata:
        """Parse ``metadata_props`` (as a dict); errors name the file and the key."""
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [PREFIX + k for k in required if PREFIX + k not in props]
        if missing:
            raise ValueError(
                f"{where}: missing ONNX metadata {', '.join(missing)} (not exported by vit-export?)"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name
            if key not in props:
                continue
            try:
                values[f.name] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: ONNX metadata {key} is not valid JSON ({exc.msg})") from exc
        meta = cls(**values)
        if not isinstance(meta.class_names, list) or not isinstance(meta.config, dict):
            raise ValueError(f"{where}: malformed ONNX metadata (vit.class_names must be a list and "
                             "vit.config an object)")
        if not isinstance(meta.format, int) or meta.format > FORMAT_VERSION:
            raise ValueError(
                f"{where}: metadata format {meta.format} is newer than this code reads ({FORMAT_VERSION})"
            )
        if len(meta.class_names) != meta.config.get("num_classes", len(meta.class_names)):
            raise ValueError(
                f"{where}: vit.class_names has {len(meta.class_names)} names for "
                f"{meta.config.get('num_classes')} classes"
            )
        return meta

    @property
    def has_attention(self) -> bool:
        return "attention" in self.outputs


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read the metadata of an exported ``.onnx`` file (weights are parsed but not used)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError family
        raise ValueError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from exc
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, where=str(path))


def set_metadata(model: Any, meta: ModelMetadata) -> None:
    """Write ``meta`` into an ``onnx.ModelProto``, replacing earlier ``vit.*`` entries."""
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith(PREFIX)}
    props.update(meta.to_props())
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
