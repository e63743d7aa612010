"""A trained :class:`~vit.vit.ViT` -> ONNX files: the float graph, onnxruntime's fused
graph, dynamic int8 and float16 variants, each carrying :mod:`export.metadata`.

Exporter: ``torch.onnx.export(..., dynamo=True)`` at opset 18 (a graph less than half the
size of the TorchScript exporter's, with the same parity; that exporter is deprecated).

Attention form: onnxruntime's transformer optimizer fuses attention only for BERT's
layout -- separate q/k/v projections and ``softmax(q @ k^T / sqrt(Dh)) @ v``. The packed
``qkv`` projection is never fused, and at opset 23 SDPA becomes ONNX's own ``Attention``
op, which ``quantize_dynamic`` rewrites into a ``com.microsoft.QAttention`` that does not
load. So the logits-only graph is traced with the attention layers' export-time layout
(``split_qkv``, :func:`vit.attention.configure_attention`): the optimizer then fuses every
block into Attention + SkipLayerNormalization + BiasGelu, and int8 quantizes it into
QAttention. Files with the ``attention`` output are traced through the explicit path
that returns the weights (so their attention is not fused). Every export's parity check
holds both to the model.

Which graph for which device: on onnxruntime's CPU provider the fused graph is not the
faster one (its SkipLayerNormalization kernel is slow at batch 64), so the plain graph
(onnxruntime applies its own CPU fusions at load) is the CPU file, and int8 is quantized
from it. The fused graph (``--optimize``) and float16 target GPU providers. Measurements:
``benchmarks/inference.py`` and benchmarks/README.md.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vit.attention import configure_attention
from vit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from vit.relevance import forward_with_contributions, token_logits
from vit.vit import ViT

from .metadata import OPSET, ModelMetadata, set_metadata

logger = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization",
             "Gelu", "BiasGelu", "FastGelu")


class ExportModel(nn.Module):
    """What is traced: images (B, C, H, W) -> logits (B, K), and with ``attention`` also
    every block's weights stacked, (B, L, H, N, N), for average-pooling models each patch
    token's share of every class logit, ``token_logits`` (B, Gh*Gw, K)
    (:func:`vit.relevance.token_logits`: class-specific maps from the file alone), and every
    block's token-to-token ``contributions`` (B, L, N, N)
    (:func:`vit.relevance.forward_with_contributions`: contribution rollout)."""

    def __init__(self, model: ViT, return_attention: bool = False) -> None:
        super().__init__()
        self.return_attention = return_attention
        if not return_attention:
            model = copy.deepcopy(model)
            configure_attention(model, split_qkv=True)
        self.model = model
        self.eval()

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not self.return_attention:
            return self.model(images)
        tokens, weights, contributions = forward_with_contributions(self.model, images)  # (B, L, N, N) last
        logits = self.model.forward_head(tokens)
        attention = torch.stack(weights, dim=1)  # (B, L, H, N, N)
        if not has_token_logits(self.model):
            return logits, attention, contributions
        shares = token_logits(self.model, tokens)  # (B, Gh*Gw, K)
        return logits, attention, shares, contributions


def has_token_logits(model: ViT) -> bool:
    """Whether files of ``model`` exported with attention also carry ``token_logits``."""
    return model.config.global_pool == "avg" and model.config.num_classes > 0


def output_names(return_attention: bool, token_logits: bool = False) -> list[str]:
    if not return_attention:
        return ["logits"]
    return ["logits", "attention", *(["token_logits"] if token_logits else []), "contributions"]


def export_graph(model: ViT, path: str | Path, *, return_attention: bool = False, opset: int = OPSET) -> None:
    """Trace ``model`` to a single-file ONNX graph with a dynamic batch dimension."""
    cfg = model.config
    example = torch.randn(2, cfg.in_channels, *cfg.image_hw)  # batch 2: 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        torch.onnx.export(
            ExportModel(model, return_attention), (example,), str(path), dynamo=True, opset_version=opset,
            input_names=["images"],
            output_names=output_names(return_attention, has_token_logits(model)),
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    if not return_attention:
        _fold_weight_slices(path)


def _fold_weight_slices(path: str | Path) -> None:
    """Fold the slices of each ``qkv`` weight that the split layout traces into three
    plain weights (the exporter's own folding stops at 8192 elements), so that the graph
    has the MatMul-on-initializer projections onnxruntime's attention fusion looks for."""
    import onnx
    import onnxscript.optimizer

    limit = 1 << 40
    model = onnxscript.optimizer.optimize(onnx.load(str(path)), input_size_limit=limit,
                                          output_size_limit=limit)
    onnx.save(model, str(path))


def default_preprocess(model: ViT) -> Preprocess:
    """For checkpoints without a preprocess record (timm files): ImageNet statistics,
    bicubic, resize to crop / 0.875 -- timm's usual evaluation transform."""
    crop = model.config.image_hw[0]
    logger.warning("checkpoint has no preprocess record; assuming ImageNet mean/std, bicubic, "
                   "resize %d, crop %d", int(crop / 0.875), crop)
    return Preprocess(crop_size=crop, resize_size=int(crop / 0.875), interpolation="bicubic",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)


def build_metadata(model: ViT, record: dict[str, Any], *, checkpoint: str | Path,
                   return_attention: bool, variant: str = "fp32") -> ModelMetadata:
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
        outputs=output_names(return_attention, has_token_logits(model)),
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
    fly) of the MatMul (and fused Attention, if any) and Conv weights.

    Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2, plain AVX-512)
    onnxruntime multiplies uint8 activations by int8 weights with ``vpmaddubsw``, whose int16
    sum of two products saturates at full 8-bit range (2 * 255 * 127 > 32767) and flips
    predictions (measured on an AVX2 machine: 83% top-1 agreement with PyTorch instead of 100%).
    With 7-bit weights (2 * 255 * 63 < 32767) the same file gives the same answers on every CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(dst).with_name(Path(dst).name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared))  # shape inference + cleanup, as onnxruntime advises
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)
    finally:
        prepared.unlink(missing_ok=True)


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """float16 weights and compute, float32 input and outputs (for GPU providers)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
