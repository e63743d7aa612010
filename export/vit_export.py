"""A ViT checkpoint -> verified ONNX files, written atomically (what ``vit-export`` runs
for classifiers).

Every file is built in a temporary folder beside the target, checked by the ONNX checker
and verified against PyTorch (random inputs and real images); only when every requested
variant passes are the files renamed into place. A failed or interrupted export leaves
the target paths as they were.

Variants: ``-o model.onnx`` (float32; with ``--optimize`` onnxruntime's fused graph),
``--quantize int8`` adds ``model.int8.onnx`` (dynamic int8 of the plain graph, for CPU),
``--fp16`` adds ``model.fp16.onnx`` (of the main graph, for GPU).

With real images (``--verify-images`` or the checkpoint's own data folder) the main file
also passes through the parity gate (:mod:`export.gate`): every other backend and precision
this machine runs is compared with onnxruntime fp32 on those images, and the verdicts go
into its ``vit.gate`` metadata, which ``backend="auto"`` reads when serving it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vit.checkpoint import load_vit
from vit.vit import ViT

from .gate import load_images, run_gate
from .metadata import OPSET, ModelMetadata
from .verify import TOLERANCES, ParityReport, Reference, check_parity, torch_reference
from .vit_onnx import build_metadata, convert_fp16, export_graph, optimize, quantize_int8, write_metadata

logger = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    return_attention: bool = False
    optimize: bool = False
    quantize: str | None = None  # "int8"
    fp16: bool = False
    verify_images: Path | None = None
    num_verify: int = 256
    num_random: int = 16
    opset: int = OPSET
    seed: int = 0
    gate: bool = True  # gate the main file on the real images, if any (export/gate.py)


@dataclass
class ExportResult:
    """What was written (only when ``passed``) and how each variant verified."""

    files: dict[str, Path] = field(default_factory=dict)  # variant -> final path
    reports: list[ParityReport] = field(default_factory=list)
    fused_ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gate: dict | None = None  # the main file's vit.gate record

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


def variant_path(output: Path, variant: str) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` / ``model.fp16.onnx``; float variants -> ``output``."""
    if variant.startswith("fp32"):
        return output
    return output.with_name(f"{output.stem}.{variant}{output.suffix}")


def export_checkpoint(checkpoint: str | Path, output: str | Path,
                      options: ExportOptions | None = None) -> ExportResult:
    """Export ``checkpoint`` to ``output`` (and variant files), verified; see the module doc."""
    options = options or ExportOptions()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"{output}: the output file name must end in .onnx")
    if options.quantize not in (None, "int8"):
        raise ValueError(f"--quantize {options.quantize!r}: only 'int8' is supported")
    output.parent.mkdir(parents=True, exist_ok=True)
    model, record = load_vit(checkpoint)
    meta = build_metadata(model, record, checkpoint=checkpoint, return_attention=options.return_attention)
    refs = _references(model, meta, checkpoint, options)
    result = ExportResult()
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        staged = _build_variants(model, meta, refs, staging, options, result)
        images = next((ref for ref in refs if ref.name == "images"), None)
        if result.passed and options.gate and images is not None:
            main_variant = next(v for v in staged if v.startswith("fp32"))
            folder = options.verify_images or checkpoint_data_dir(checkpoint)
            result.gate = run_gate(staged[main_variant], images.inputs, images.labels,
                                   images=f"images from {folder}")
            gated = {**_with_variant(meta, main_variant).__dict__, "gate": result.gate}
            write_metadata(staged[main_variant], ModelMetadata(**gated))
        if result.passed:
            for variant, tmp in staged.items():  # variants first, the main file last
                target = variant_path(output, variant)
                tmp.replace(target)
                result.files[variant] = target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _build_variants(model: ViT, meta: ModelMetadata, refs: list[Reference], staging: Path,
                    options: ExportOptions, result: ExportResult) -> dict[str, Path]:
    def stage(variant: str, path: Path, tolerance: str) -> None:
        write_metadata(path, _with_variant(meta, variant))
        for ref in refs:
            result.reports.append(check_parity(
                path, ref, variant=variant, tolerance=TOLERANCES[tolerance],
                grid=tuple(meta.grid_size), num_prefix_tokens=meta.num_prefix_tokens,
                pool=meta.config["global_pool"]))

    main_variant, main = "fp32", staging / "fp32.onnx"
    export_graph(model, main, return_attention=options.return_attention, opset=options.opset)
    stage("fp32", main, "fp32")
    plain = main
    if options.optimize:
        main_variant, optimized = "fp32-optimized", staging / "optimized.onnx"
        result.fused_ops = optimize(main, optimized, model)
        stage(main_variant, optimized, "fp32")
        main = optimized
    staged: dict[str, Path] = {}
    if options.quantize == "int8":  # from the plain graph: faster on CPU than the fused one (see onnx_export)
        quantize_int8(plain, staging / "int8.onnx")
        stage("int8", staging / "int8.onnx", "int8")
        staged["int8"] = staging / "int8.onnx"
    if options.fp16:
        convert_fp16(main, staging / "fp16.onnx")
        problem = _cpu_cannot_run(staging / "fp16.onnx")
        if problem:  # onnxruntime's CPU provider lacks float16 kernels for some fused ops
            write_metadata(staging / "fp16.onnx", _with_variant(meta, "fp16"))
            result.notes.append(f"fp16: not verified here, the CPU provider cannot run it ({problem}); "
                                "verify it on a GPU")
        else:
            stage("fp16", staging / "fp16.onnx", "fp16")
        staged["fp16"] = staging / "fp16.onnx"
    staged[main_variant] = main
    return staged


def _cpu_cannot_run(path: Path) -> str | None:
    """Why onnxruntime's CPU provider cannot load ``path``, or ``None`` if it can."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception classes (NotImplemented, Fail...)
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return None


def _with_variant(meta: ModelMetadata, variant: str) -> ModelMetadata:
    return ModelMetadata(**{**meta.__dict__, "variant": variant})


def _references(model: ViT, meta: ModelMetadata, checkpoint: str | Path,
                options: ExportOptions) -> list[Reference]:
    """PyTorch outputs on random inputs and, when a folder is known, on real images."""
    cfg = model.config
    rng = np.random.default_rng(options.seed)
    random = rng.standard_normal((options.num_random, cfg.in_channels, *cfg.image_hw)).astype(np.float32)
    refs = [torch_reference(model, random, name="random", return_attention=options.return_attention)]
    folder = options.verify_images or checkpoint_data_dir(checkpoint)
    if folder is not None:
        images, labels = load_images(Path(folder), meta, options.num_verify)
        if len(images):
            refs.append(torch_reference(model, images, name="images",
                                        return_attention=options.return_attention, labels=labels))
    return refs


def checkpoint_data_dir(checkpoint: str | Path) -> Path | None:
    """The image folder a Lightning checkpoint was trained on, if its data module saved
    one among its hyper-parameters (``data_dir`` or ``root``) and it still exists."""
    path = Path(checkpoint)
    if path.suffix != ".ckpt":
        return None
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # hyper-parameters of foreign types: no folder to offer
        return None
    for section in ("datamodule_hyper_parameters", "hyper_parameters"):
        params = ckpt.get(section) or {}
        for key in ("data_dir", "root"):
            value = params.get(key) if isinstance(params, dict) else None
            if isinstance(value, str) and Path(value).is_dir():
                return Path(value)
    return None
