"""vit-export: parity with PyTorch, metadata round trip, variants, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_export_fixtures import (  # noqa: F401  (fixtures)
    TINY,
    exported,
    save_ckpt,
    tiny_checkpoint,
    tiny_data,
    tiny_onnx,
    tiny_onnx_attention,
    train_tiny,
)

from export import cli
from export.cli import ExportOptions, export_checkpoint
from export.metadata import ModelMetadata, read_metadata
from export.onnx_export import ExportModel, build_metadata
from export.verify import Tolerance
from vit.checkpoint import load_vit, save_safetensors
from vit.rollout import attention_rollout


@pytest.fixture(scope="module")
def variants(tmp_path_factory, tiny_checkpoint, tiny_data):  # noqa: F811
    """One export with every float/int8/fp16 option."""
    return exported(tmp_path_factory, tiny_checkpoint, tiny_data, optimize=True, quantize="int8", fp16=True)


def _torch_logits(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_vit(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def test_trained_export_round_trips_with_parity(tmp_path_factory, tiny_checkpoint, tiny_data):  # noqa: F811
    path, result = exported(tmp_path_factory, tiny_checkpoint, tiny_data)
    assert {r.inputs for r in result.reports} == {"random", "images"}
    for report in result.reports:
        assert report.passed and report.max_logit_diff < 1e-4 and report.top1_agreement == 1.0
    images = next(r for r in result.reports if r.inputs == "images")
    assert images.count == 36 and images.accuracy == images.reference_accuracy
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x)[0], _torch_logits(tiny_checkpoint, x), atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_one_file_serves_any_batch_size(tiny_onnx, tiny_checkpoint, batch):  # noqa: F811
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    (logits,) = _run(tiny_onnx, x)
    assert logits.shape == (batch, TINY["num_classes"])
    np.testing.assert_allclose(logits, _torch_logits(tiny_checkpoint, x), atol=1e-4)


def test_metadata_reads_back_what_was_written(tiny_onnx, tiny_checkpoint):  # noqa: F811
    model, record = load_vit(tiny_checkpoint)
    written = build_metadata(model, record, checkpoint=tiny_checkpoint, attention=False)
    read = read_metadata(tiny_onnx)
    assert read.source.pop("exported_at") and written.source.pop("exported_at")
    assert read == written
    assert read.class_names == record["class_names"] and read.config == record["config"]
    assert read.preprocess == record["preprocess"] and read.val_acc == record["val_acc"]
    assert read.grid_size == [4, 4] and read.num_prefix_tokens == 1 and read.input_size == [32, 32]
    assert read.outputs == ["logits"] and read.variant == "fp32"
    assert read.source["checkpoint"] == str(tiny_checkpoint)
    # plain JSON under vit.* keys, readable by any ONNX tool
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert ModelMetadata.from_props(props) == read_metadata(tiny_onnx)


def test_metadata_errors_name_the_key():
    good = ModelMetadata(["a", "b"], [32, 32], {}, {"num_classes": 2}, 1, [4, 4], ["logits"]).to_props()
    with pytest.raises(ValueError, match="missing ONNX metadata vit.class_names"):
        ModelMetadata.from_props({k: v for k, v in good.items() if k != "vit.class_names"}, "m.onnx")
    with pytest.raises(ValueError, match="vit.grid_size is not valid JSON"):
        ModelMetadata.from_props({**good, "vit.grid_size": "[4,"}, "m.onnx")
    with pytest.raises(ValueError, match="2 classes"):
        ModelMetadata.from_props({**good, "vit.class_names": '["a"]'}, "m.onnx")


def test_attention_output_matches_pytorch_and_its_rollout(tiny_onnx_attention, tiny_checkpoint):  # noqa: F811
    model, _ = load_vit(tiny_checkpoint)
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits, attention = _run(tiny_onnx_attention, x)
    with torch.no_grad():
        ref_logits, weights = model(torch.from_numpy(x), return_attention=True)
    ref = torch.stack(weights, 1).numpy()
    assert attention.shape == (3, TINY["depth"], TINY["num_heads"], 17, 17)  # (B, L, H, N, N)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(attention, ref, atol=1e-5)
    np.testing.assert_allclose(attention_rollout(attention, grid=(4, 4)), attention_rollout(ref, grid=(4, 4)),
                               rtol=1e-4, atol=1e-6)
    assert read_metadata(tiny_onnx_attention).outputs == ["logits", "attention"]


def test_export_only_attention_layout_equals_the_model():
    torch.manual_seed(0)
    from vit.vit import ViT, ViTConfig

    model = ViT(ViTConfig(**{**TINY, "qkv_bias": True})).eval()
    for p in model.parameters():  # non-trivial biases, unlike the zero init
        p.data += 0.05 * torch.randn_like(p)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ExportModel(model)(x), model(x), atol=1e-5, rtol=1e-5)
        logits, weights = ExportModel(model, attention=True)(x)
        assert weights.shape == (4, TINY["depth"], TINY["num_heads"], 17, 17)


def test_optimized_int8_and_fp16_variants(variants, tiny_data):  # noqa: F811
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
    if ("fp16", "images") in reports:  # the CPU provider could run it
        assert reports[("fp16", "images")].passed
    else:
        assert any(n.startswith("fp16") for n in result.notes)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_verification_writes_nothing(tmp_path, tiny_checkpoint, monkeypatch, capsys):  # noqa: F811
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    impossible = Tolerance(atol=-1.0, rtol=0.0, min_top1_agreement=1.0, attention_atol=0.0, rollout_rtol=0.0)
    monkeypatch.setitem(cli.TOLERANCES, "fp32", impossible)
    assert cli.main([str(tiny_checkpoint), "-o", str(target), "--quantize", "int8"]) == 1
    assert "FAILED: max logit difference" in capsys.readouterr().out
    assert target.read_bytes() == b"previous model"
    assert not target.with_name("model.int8.onnx").exists() and _leftovers(tmp_path) == []


def test_interrupted_export_leaves_no_file(tmp_path, tiny_checkpoint, monkeypatch):  # noqa: F811
    def interrupt(*args, **kwargs):
        staged = list(tmp_path.glob(".model.onnx.*.tmp/*.onnx"))
        assert staged, "the file is staged beside the target before verification"
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "check_parity", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(tiny_checkpoint, tmp_path / "model.onnx", ExportOptions(num_random=2))
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_safetensors_and_reports(tmp_path, tiny_checkpoint, tiny_data, capsys):  # noqa: F811
    model, record = load_vit(tiny_checkpoint)
    save_safetensors(model, record, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli.onnx"
    assert cli.main([str(tmp_path / "tiny.safetensors"), "-o", str(out), "--verify-images", str(tiny_data),
                     "--num-verify", "6"]) == 0
    text = capsys.readouterr().out
    assert "max|dlogit|=" in text and "images  n=6" in text and f"wrote {out}" in text
    assert read_metadata(out).class_names == record["class_names"]


def test_cli_bad_inputs_fail_with_one_line(tmp_path, tiny_checkpoint, capsys):  # noqa: F811
    assert cli.main([str(tmp_path / "nope.ckpt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "nope.ckpt: no such checkpoint file" in capsys.readouterr().err
    assert cli.main([str(tiny_checkpoint), "-o", str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_data_dir_is_used_when_saved(tmp_path, tiny_data):  # noqa: F811
    model, record = train_tiny(tiny_data, steps=1)
    path = save_ckpt(model, record, tmp_path / "a.ckpt")
    assert cli.checkpoint_data_dir(path) is None
    ckpt = torch.load(path, weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {"data_dir": str(tiny_data)}
    torch.save(ckpt, path)
    assert cli.checkpoint_data_dir(path) == tiny_data
    meta = build_metadata(model, record, checkpoint=path, attention=False)
    refs = cli._references(model, meta, path, ExportOptions(num_random=2, num_verify=5))
    assert [r.name for r in refs] == ["random", "images"]
    assert len(refs[1].inputs) == 5 and set(refs[1].labels) <= {0, 1, 2}


def test_conv_stem_exports_with_parity(tmp_path, tiny_data):  # noqa: F811
    """The conv tokenizer (the default recipe's stem) exports; ORT equals PyTorch, attention too."""
    from conftest import CLASSES

    from export.classifier import OnnxClassifier
    from vit.preprocess import Preprocess
    from vit.vit import ViT, ViTConfig

    torch.manual_seed(0)
    model = ViT(ViTConfig(**{**TINY, "patch_size": 4, "stem": "conv", "stem_width": 16,
                             "class_token": False, "global_pool": "avg"})).eval()
    record = {"config": model.config.to_dict(), "class_names": list(CLASSES),
              "preprocess": Preprocess().to_dict(), "val_acc": None, "source": "test"}
    ckpt = save_ckpt(model, record, tmp_path / "conv.ckpt")
    options = ExportOptions(verify_images=tiny_data, attention=True)
    result = export_checkpoint(ckpt, tmp_path / "conv.onnx", options)
    assert result.passed, "\n".join(r.line() for r in result.reports)
    info = OnnxClassifier(tmp_path / "conv.onnx").info
    assert tuple(info.grid) == (8, 8) and info.num_prefix_tokens == 0
