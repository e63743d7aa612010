"""The parity gate (export/gate.py): verdicts per backend and precision on real images, pass and
fail, written into an exported file without touching its graph, read back by the auto choice;
``python -m export.gate`` without torch; ``vit-export --verify-images`` prints it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CLASSES, REPO, onnx_outputs

from export import backends
from export.gate import (
    GateTolerance,
    _Tally,
    _verdict,
    format_gate,
    load_images,
    main,
    run_gate,
    verdicts,
    write_gate,
)
from export.metadata import read_metadata
from export.onnx_classifier import OnnxClassifier

HAS_BF16 = "bf16" in backends.availability()[0].get("openvino", ())


@pytest.fixture
def fresh(tmp_path: Path, tiny_onnx_attention: Path) -> Path:
    """A copy of the tiny export with attention, without a gate record."""
    path = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx_attention, path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "vit.gate":
            prop.value = "null"
    onnx.save(model, str(path))
    return path


def test_gate_records_every_backend_and_passes_fp32(fresh: Path, tiny_data: Path) -> None:
    x, labels = load_images(tiny_data, read_metadata(fresh), 36)
    assert x.shape == (36, 3, 32, 32) and set(labels) == {0, 1, 2}
    record = run_gate(fresh, x, labels, images="tiny shapes")
    results = {(r["backend"], r["precision"]): r for r in record["results"]}
    assert ("onnxruntime", "fp32") not in results  # the reference itself
    fp32 = results[("openvino", "fp32")]
    assert fp32["passed"] and fp32["top1_agreement"] == 1.0 and fp32["max_logit_diff"] < 1e-4
    assert fp32["accuracy"] == record["reference_accuracy"] and fp32["attention_diff"] < 1e-4
    assert fp32["rollout_diff"] < 1e-3 and record["count"] == 36 and record["labeled"] == 36
    assert (("openvino", "bf16") in results) == HAS_BF16
    table = format_gate(record, "openvino fp32")
    assert "parity gate on 36 tiny shapes against onnxruntime fp32" in table and "passed" in table


def test_gate_compares_class_shares_of_average_pooling_files(tiny_onnx_token_logits: Path) -> None:
    """Files with token_logits (class maps from the file) have them gated as well."""
    record = read_metadata(tiny_onnx_token_logits).gate  # written by vit-export --verify-images
    fp32 = next(r for r in record["results"] if (r["backend"], r["precision"]) == ("openvino", "fp32"))
    assert fp32["passed"] and fp32["token_logits_diff"] < 1e-4 and fp32["rollout_diff"] < 1e-3
    strict = GateTolerance(token_logits_rtol=-1.0)  # nothing passes
    x, labels = load_images(Path(record["images"].removeprefix("images from ")),
                            read_metadata(tiny_onnx_token_logits), 12)
    failed = run_gate(tiny_onnx_token_logits, x, labels, combos=[("openvino", "fp32")], tolerance=strict)
    assert failed["results"][0]["failures"][-1].startswith("relative token_logits difference")
    assert "classes" in format_gate(failed)


def test_failed_precision_is_not_used_by_auto(fresh: Path, tiny_data: Path) -> None:
    if not HAS_BF16:
        pytest.skip("this CPU has no bf16")
    x, labels = load_images(tiny_data, read_metadata(fresh), 36)
    strict = GateTolerance(attention_atol=1e-6)  # bf16 moves attention weights by ~1e-3 and more
    record = run_gate(fresh, x, labels, tolerance=strict)
    bf16 = next(r for r in record["results"] if r["precision"] == "bf16")
    assert not bf16["passed"] and bf16["failures"][0].startswith("attention difference")
    write_gate(fresh, record)
    assert verdicts(read_metadata(fresh).gate)[("openvino", "bf16")] is False
    clf = OnnxClassifier(fresh)
    assert (clf.backend, clf.precision) == ("openvino", "fp32")
    # a record where it passed: auto takes it
    bf16.update(passed=True, failures=[])
    write_gate(fresh, record)
    clf = OnnxClassifier(fresh)
    assert (clf.backend, clf.precision) == ("openvino", "bf16")


def test_write_gate_changes_nothing_but_the_record(fresh: Path, tiny_data: Path) -> None:
    before = onnx.load(str(fresh))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    outputs = onnx_outputs(fresh, x)
    fresh.chmod(0o640)
    write_gate(fresh, {"reference": "onnxruntime fp32", "results": []})
    after = onnx.load(str(fresh))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert (fresh.stat().st_mode & 0o777) == 0o640 and not list(fresh.parent.glob(".*.tmp"))
    for got, want in zip(onnx_outputs(fresh, x), outputs, strict=True):
        np.testing.assert_array_equal(got, want)
    props = {p.key: p.value for p in after.metadata_props}
    assert props.keys() == {p.key for p in before.metadata_props}
    assert {k: v for k, v in props.items() if k != "vit.gate"} == \
        {p.key: p.value for p in before.metadata_props if p.key != "vit.gate"}


def test_gate_command_runs_without_torch(fresh: Path, tiny_data: Path) -> None:
    code = f"""
import sys
from export.gate import main
assert main([{str(fresh)!r}, "--images", {str(tiny_data)!r}, "--num-images", "12"]) == 0
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "parity gate on 12 images from" in proc.stdout and "auto serves this file with" in proc.stdout
    record = read_metadata(fresh).gate
    assert record["count"] == 12 and record["results"]


def test_gate_command_refuses_bad_input_in_one_line(fresh: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(fresh), "--images", str(tmp_path / "empty"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"export.gate: {tmp_path / 'empty'}: no image files to verify with"
    assert main([str(tmp_path / "none.onnx"), "--images", str(tmp_path)]) == 2
    assert "none.onnx: no such ONNX file" in capsys.readouterr().err


def test_export_gates_what_it_writes(tiny_onnx: Path) -> None:
    """conftest's exports pass --verify-images: the written file carries its gate record."""
    record = read_metadata(tiny_onnx).gate
    assert record["images"].startswith("images from ") and record["count"] == 3 * 12
    assert {r["backend"] for r in record["results"]} == {"openvino"}
    assert all(isinstance(r["passed"], bool) for r in record["results"])
    assert record["labeled"] == 36 and len(CLASSES) == 3


@pytest.mark.parametrize("images, flips, passed", [(256, 1, True), (256, 2, False), (1000, 2, True),
                                                    (1000, 3, False)])
def test_accuracy_change_is_judged_at_the_resolution_of_the_sample(images: int, flips: int,
                                                                   passed: bool) -> None:
    """Within 0.2 points, or one image where the sample is too small to show 0.2 points: one
    wrong answer in 256 images (0.39 points) is what top-1 agreement already allows."""
    labels = np.arange(images) % 10
    got = labels.copy()
    got[:flips] = (labels[:flips] + 1) % 10  # right answers turned wrong
    tally = _Tally()
    tally.top1.append(got)
    known = np.ones(images, bool)
    result = _verdict(("openvino", "bf16"), tally, labels, labels, known, 1.0, GateTolerance())
    assert result.passed is passed
    assert passed or result.failures[-1] == (f"accuracy {1 - flips / images:.2%} vs 100.00% (more than "
                                            f"{max(0.2, 100 / images):.2f} points)")
