"""benchmarks/cnn_baseline.py: the small CNN trains on vit-train's split, its table sits next
to an exported ViT evaluated on the same images, its weights are saved; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

from export.evaluate import evaluate
from export.onnx_classifier import OnnxClassifier


def test_trains_and_tables_against_the_vit(tiny_data: Path, tiny_onnx: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture, one_thread: None) -> None:
    bench = load_benchmark("cnn_baseline")
    weights = tmp_path / "cnn.pt"
    argv = ["--data", str(tiny_data), "--model", str(tiny_onnx), "--epochs", "2", "--batch-size", "8",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(weights)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 and rows[0].startswith("| small CNN |")
    vit_acc = evaluate(OnnxClassifier(tiny_onnx), tiny_data, 0.1, 0)["accuracy"]
    assert f"| {vit_acc:.2%} |" in rows[1] and rows[1].endswith("| 1.00x |")  # the reference row
    state = torch.load(weights, weights_only=True)
    model = bench.small_cnn(3)
    model.load_state_dict(state)  # the saved network is the one the table measured
    assert not list(tmp_path.glob(".cnn.pt.*"))  # no temporary file left behind


def test_bad_input_is_one_line(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark("cnn_baseline")
    assert bench.main(["--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnn_baseline: ") and str(tmp_path / "none") in err and "\n" not in err
    assert bench.main(["--data", str(tiny_data), "--model", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"cnn_baseline: {tmp_path / 'x.onnx'}: no such file"
    assert bench.main(["--data", str(tiny_data), "--cache-dir", str(tmp_path / "c")]) == 2  # batch 512
    assert "need at least --batch-size (512)" in capsys.readouterr().err
