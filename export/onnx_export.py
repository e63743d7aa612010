"""A trained :class:`~vit.vit.ViT` -> ONNX files: the float graph, onnxruntime's fused
graph, dynamic int8 and float16 variants, each carrying :mod:`export.metadata`.

Exporter choice (measured on the CIFAR-size ViT, torch 2.14, onnxruntime 1.32):
``torch.onnx.export(..., dynamo=True)`` at opset 18 gives a graph of ~200 nodes with
exact parity (~6e-7), while the TorchScript exporter gives ~500 nodes (``Constant``/
``Identity``/``Shape`` clutter) with the same parity, is deprecated, and leaves the first
LayerNorm unfused. So the dynamo exporter it is.

Attention form: onnxruntime's transformer optimizer fuses attention only for BERT's
layout -- separate q/k/v projections and ``softmax(q @ k^T / sqrt(Dh)) @ v``. Our
packed ``qkv`` projection, whether exported from the SDPA path (decomposed at opset 18)
or from the explicit path, is never fused (0 Attention nodes). At opset 23 SDPA becomes
ONNX's own ``Attention`` op, but ``quantize_dynamic`` then rewrites it into a
``com.microsoft.QAttention`` that does not load. So the logits-only graph is traced
through :class:`vit.attention.SplitQKVAttention`, an export-only view of each block's weights in BERT's
layout: the optimizer then fuses every block into Attention + SkipLayerNormalization +
BiasGelu, and int8 quantizes it into QAttention. Its math is checked against the model
(which runs :mod:`vit.attention`) by the parity check of every export. Files with the
``attention`` output are traced through the model's own explicit path instead, since
the weights must stay visible (so their attention is not fused).

Which graph for which device (CIFAR-size ViT, onnxruntime CPU provider, one thread):
the fused graph is *not* faster on CPU -- its SkipLayerNormalization kernel took ~6 ms
per call at batch 64 against ~0.7 ms for LayerNormalization + Add, and fused Attention
matched the unfused MatMuls -- so the plain graph (onnxruntime applies its own CPU
fusions at load) is the CPU file, and int8 is quantized from it (~1.3x the int8 of the
fused graph). The fused graph (``--optimize``) and float16 target GPU providers, whose
Attention/SkipLayerNormalization kernels are the fast ones.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vit.attention import SplitQKVAttention
from vit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from vit.vit import ViT

from .metadata import ModelMetadata, set_metadata

logger = logging.getLogger(__name__)

OPSET = 18
FUSED_OPS = ("Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
             "Gelu", "BiasGelu", "FastGelu")


class ExportModel(nn.Module):
    """What is traced: images (B, C, H, W) -> logits (B, K), and with ``attention`` also
    every block's weights stacked, (B, L, H, N, N)."""

    def __init__(self, model: ViT, attention: bool = False) -> None:
        super().__init__()
        self.attention = attention
        if not attention:
            model = copy.deepcopy(model)
            for block in model.blocks:
                block.attn = SplitQKVAttention.from_fused(block.attn)
        self.model = model
        self.eval()

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if not self.attention:
            return self.model(images)
        logits, weights = self.model(images, return_attention=True)
        return logits, torch.stack(weights, dim=1)  # (B, L, H, N, N)


def output_names(attention: bool) -> list[str]:
    return ["logits", "attention"] if attention else ["logits"]


def export_graph(model: ViT, path: str | Path, *, attention: bool = False, opset: int = OPSET) -> None:
    """Trace ``model`` to a single-file ONNX graph with a dynamic batch dimension."""
    cfg = model.config
    example = torch.randn(2, cfg.in_channels, *cfg.image_hw)  # batch 2: 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        torch.onnx.export(
            ExportModel(model, attention), (example,), str(path), dynamo=True, opset_version=opset,
            input_names=["images"], output_names=output_names(attention),
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )


def default_preprocess(model: ViT) -> Preprocess:
    """For checkpoints without a preprocess record (timm files): ImageNet statistics,
    bicubic, resize to crop / 0.875 -- timm's usual evaluation transform."""
    crop = model.config.image_hw[0]
    logger.warning("checkpoint has no preprocess record; assuming ImageNet mean/std, bicubic, "
                   "resize %d, crop %d", int(crop / 0.875), crop)
    return Preprocess(crop_size=crop, resize_size=int(crop / 0.875), interpolation="bicubic",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)


def build_metadata(model: ViT, record: dict[str, Any], *, checkpoint: str | Path,
                   attention: bool, variant: str = "fp32") -> ModelMetadata:
    """The metadata of a file exported from ``model`` and its checkpoint ``record``."""
    cfg = model.config
    names = record.get("class_names") or [f"class_{i}" for i in range(cfg.num_classes)]
    spec = Preprocess(**record["preprocess"]) if record.get("preprocess") else default_preprocess(model)
    if cfg.image_hw != (spec.crop_size, spec.crop_size):
        raise ValueError(f"{checkpoint}: preprocess crop {spec.crop_size} does not match the model's "
                         f"input size {cfg.image_hw}")
    return ModelMetadata(
        class_names=list(names), input_size=list(cfg.image_hw), preprocess=spec.to_dict(),
        config=cfg.to_dict(), num_prefix_tokens=cfg.num_prefix_tokens, grid_size=list(cfg.grid_size),
        outputs=output_names(attention),
        source={"checkpoint": str(checkpoint), "record_source": record.get("source"),
                "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        val_acc=record.get("val_acc"), variant=variant,
    )


def write_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """Store ``meta`` in the ONNX file at ``path`` and run the ONNX checker on the result."""
    import onnx

    model = onnx.load(str(path))
    set_metadata(model, meta)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def optimize(src: str | Path, dst: str | Path, model: ViT) -> dict[str, int]:
    """onnxruntime's transformer optimizer (fusions only, opt_level 0, so the file stays
    portable across execution providers); returns the count of each fused operator."""
    import onnx
    from onnxruntime.transformers import optimizer

    cfg = model.config
    graph = onnx.load(str(src))
    _branch_first(graph.graph)
    result = optimizer.optimize_model(graph, model_type="vit", num_heads=cfg.num_heads,
                                      hidden_size=cfg.dim, opt_level=0)
    result.save_model_to_file(str(dst))
    return count_ops(dst)


def _branch_first(graph: Any) -> None:
    """Put the branch before the residual in each ``x + branch`` Add that feeds a LayerNorm.

    onnxruntime's attention fusion looks for the attention output among that Add's
    inputs and takes the first Add-producing input it meets. In front of block 0 the
    residual is itself an Add (tokens + position embedding, whose constant side the
    exporter folds when N * D is small), so block 0 was left unfused in small models.
    Addition commutes: the swap changes no value.
    """
    producer = {out: node for node in graph.node for out in node.output}
    feeds_norm = {node.input[0] for node in graph.node if node.op_type == "LayerNormalization"}
    for node in graph.node:
        if node.op_type != "Add" or node.output[0] not in feeds_norm:
            continue
        residual, branch = (producer.get(name) for name in node.input)
        branch_is_linear = branch is not None and branch.op_type == "Add" and any(
            getattr(producer.get(name), "op_type", None) == "MatMul" for name in branch.input)
        if residual is not None and residual.op_type == "Add" and branch_is_linear:
            node.input[0], node.input[1] = node.input[1], node.input[0]


def count_ops(path: str | Path, op_types: tuple[str, ...] = FUSED_OPS) -> dict[str, int]:
    """How many nodes of each of ``op_types`` the graph at ``path`` has (zeros left out)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type in op_types:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 quantization (weights int8 per channel, activations quantized on the
    fly) of the MatMul (and fused Attention, if any) and Conv weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(dst).with_name(Path(dst).name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared))  # shape inference + cleanup, as onnxruntime advises
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """float16 weights and compute, float32 input and outputs (for GPU providers)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
