"""A ViT checkpoint -> verified ONNX files (export/vit_export.py): parity with PyTorch on random
and real images, the optimized, int8 and fp16 variants, atomic writes, the data folder a
checkpoint remembers, the conv stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, TINY, exported, onnx_outputs, save_ckpt, torch_logits, train_tiny

from export import vit_export
from export.metadata import read_metadata
from export.onnx_classifier import OnnxClassifier
from export.vit_export import ExportOptions, export_checkpoint, variant_path
from export.vit_onnx import build_metadata
from vit.preprocess import Preprocess
from vit.vit import ViT, ViTConfig


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
             tiny_data: Path) -> tuple[Path, vit_export.ExportResult]:
    """One export with every float/int8/fp16 option."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data, optimize=True, quantize="int8", fp16=True)


def test_trained_export_round_trips_with_parity(tmp_path_factory: pytest.TempPathFactory,
                                                tiny_checkpoint: Path, tiny_data: Path) -> None:
    path, result = exported(tmp_path_factory, tiny_checkpoint, tiny_data)
    assert {r.inputs for r in result.reports} == {"random", "images"}
    for report in result.reports:
        assert report.passed and report.max_logit_diff < 1e-4 and report.top1_agreement == 1.0
    images = next(r for r in result.reports if r.inputs == "images")
    assert images.count == 36 and images.accuracy == images.reference_accuracy
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(onnx_outputs(path, x)[0], torch_logits(tiny_checkpoint, x), atol=1e-4)


def test_optimized_int8_and_fp16_variants(variants: tuple[Path, vit_export.ExportResult],
                                          tiny_data: Path) -> None:
    out, result = variants
    assert set(result.files) == {"fp32-optimized", "int8", "fp16"}
    assert result.files["int8"] == out.with_name("model.int8.onnx")
    # every block fused: Attention + SkipLayerNorm + BiasGelu
    assert result.fused_ops["Attention"] == TINY["depth"] and result.fused_ops["BiasGelu"] == TINY["depth"]
    assert result.fused_ops.get("SkipLayerNormalization", 0) >= 2 * TINY["depth"]
    for variant, path in result.files.items():
        assert read_metadata(path).variant == variant
    reports = {(r.variant, r.inputs): r for r in result.reports}
    assert reports[("fp32-optimized", "images")].max_logit_diff < 1e-4
    int8 = reports[("int8", "images")]
    assert int8.passed and int8.accuracy is not None
    assert abs(int8.accuracy - int8.reference_accuracy) <= 0.05
    ops = {n.op_type for n in onnx.load(str(result.files["int8"])).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # quantized from the plain graph
    # the fused main file is gated too: OpenVINO reads onnxruntime's fused operators
    assert read_metadata(out).gate == result.gate
    fp32 = next(r for r in result.gate["results"] if (r["backend"], r["precision"]) == ("openvino", "fp32"))
    assert fp32["passed"] and fp32["max_logit_diff"] < 1e-4
    clf = OnnxClassifier(out)
    assert clf.predict_batch(np.zeros((1, 3, 32, 32), np.float32))["logits"].shape == (1, len(CLASSES))
    int8 = OnnxClassifier(result.files["int8"])  # served as it is, where it was verified
    assert (int8.backend, int8.precision) == ("onnxruntime", "int8")
    if ("fp16", "images") in reports:  # the CPU provider could run it
        assert reports[("fp16", "images")].passed
    else:
        assert any(n.startswith("fp16") for n in result.notes)


def test_interrupted_export_leaves_no_file(tmp_path: Path, tiny_checkpoint: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args, **kwargs) -> None:
        staged = list(tmp_path.glob(".model.onnx.*.tmp/*.onnx"))
        assert staged, "the file is staged beside the target before verification"
        raise KeyboardInterrupt

    monkeypatch.setattr(vit_export, "check_parity", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(tiny_checkpoint, tmp_path / "model.onnx", ExportOptions(num_random=2))
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_data_dir_is_used_when_saved(tmp_path: Path, tiny_data: Path) -> None:
    model, record = train_tiny(tiny_data, steps=1)
    path = save_ckpt(model, record, tmp_path / "a.ckpt")
    assert vit_export.checkpoint_data_dir(path) is None
    ckpt = torch.load(path, weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {"data_dir": str(tiny_data)}
    torch.save(ckpt, path)
    assert vit_export.checkpoint_data_dir(path) == tiny_data
    meta = build_metadata(model, record, checkpoint=path, return_attention=False)
    refs = vit_export._references(model, meta, path, ExportOptions(num_random=2, num_verify=5))
    assert [r.name for r in refs] == ["random", "images"]
    assert len(refs[1].inputs) == 5 and set(refs[1].labels) <= {0, 1, 2}


def test_conv_stem_exports_with_parity(tmp_path: Path, tiny_data: Path) -> None:
    """The conv tokenizer (the default recipe's stem) exports; ORT equals PyTorch, attention too."""
    torch.manual_seed(0)
    model = ViT(ViTConfig(**{**TINY, "patch_size": 4, "stem": "conv", "stem_width": 16,
                             "class_token": False, "global_pool": "avg"})).eval()
    record = {"config": model.config.to_dict(), "class_names": list(CLASSES),
              "preprocess": Preprocess().to_dict(), "val_acc": None, "source": "test"}
    ckpt = save_ckpt(model, record, tmp_path / "conv.ckpt")
    options = ExportOptions(verify_images=tiny_data, return_attention=True)
    result = export_checkpoint(ckpt, tmp_path / "conv.onnx", options)
    assert result.passed, "\n".join(r.line() for r in result.reports)
    info = OnnxClassifier(tmp_path / "conv.onnx").info
    assert tuple(info.grid) == (8, 8) and info.num_prefix_tokens == 0


def test_variant_paths_and_option_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = Path("models/m.onnx")
    assert variant_path(out, "fp32") == out and variant_path(out, "fp32-optimized") == out
    assert variant_path(out, "int8") == Path("models/m.int8.onnx")
    assert variant_path(out, "fp16") == Path("models/m.fp16.onnx")
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_checkpoint(tiny_checkpoint, tmp_path / "m.txt")
    with pytest.raises(ValueError, match="only 'int8' is supported"):
        export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", ExportOptions(quantize="int4"))
    assert list(tmp_path.iterdir()) == []
