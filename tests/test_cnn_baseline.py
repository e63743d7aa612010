"""benchmarks/cnn_baseline.py: the small CNN trains on vit-train's split, its table sits next
to an exported ViT evaluated on the same images, its weights are saved as a teacher, a run
stopped and continued ends as one that ran through; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

from export.evaluate import evaluate
from export.onnx_classifier import OnnxClassifier
from training.teacher import load_teacher


def test_trains_and_tables_against_the_vit(tiny_data: Path, tiny_onnx: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture, one_thread: None) -> None:
    bench = load_benchmark("cnn_baseline")
    weights = tmp_path / "cnn.safetensors"
    argv = ["--data", str(tiny_data), "--model", str(tiny_onnx), "--epochs", "2", "--batch-size", "8",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(weights)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 and rows[0].startswith("| small CNN |")
    vit_acc = evaluate(OnnxClassifier(tiny_onnx), tiny_data, 0.1, 0)["accuracy"]
    assert f"| {vit_acc:.2%} |" in rows[1] and rows[1].endswith("| 1.00x |")  # the reference row
    model, record = load_teacher(weights)  # the saved network is the one the table measured
    assert f"| {record['val_acc']:.2%} |" in rows[0]
    assert record["class_names"] == ["circle", "square", "stripes"]
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_a_run_stopped_and_continued_ends_with_the_same_weights(tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               one_thread: None) -> None:
    """--state: the weights, optimizer, schedule and random stream continue exactly."""
    bench = load_benchmark("cnn_baseline")
    common = ["--data", str(tiny_data), "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"),
              "--precision", "32"]
    assert bench.main([*common, "--epochs", "3", "--output", str(tmp_path / "whole.safetensors")]) == 0

    class SessionEnd(Exception):
        pass

    def end_after_one_epoch(epoch: int, seconds: float) -> None:
        raise SessionEnd

    train = bench.train
    monkeypatch.setattr(bench, "train", lambda *args, **kw: train(*args[:7], end_after_one_epoch, **kw))
    state = tmp_path / "state.pt"
    with pytest.raises(SessionEnd):
        bench.main([*common, "--epochs", "3", "--state", str(state)])
    monkeypatch.undo()
    assert torch.load(state, weights_only=True)["epoch"] == 1
    assert bench.main([*common, "--epochs", "3", "--state", str(state), "--output",
                       str(tmp_path / "resumed.safetensors")]) == 0
    whole, _ = load_teacher(tmp_path / "whole.safetensors")
    resumed, _ = load_teacher(tmp_path / "resumed.safetensors")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_input_is_one_line(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark("cnn_baseline")
    assert bench.main(["--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnn_baseline: ") and str(tmp_path / "none") in err and "\n" not in err
    assert bench.main(["--data", str(tiny_data), "--model", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"cnn_baseline: {tmp_path / 'x.onnx'}: no such file"
    assert bench.main(["--data", str(tiny_data), "--cache-dir", str(tmp_path / "c")]) == 2  # batch 512
    assert "need at least --batch-size (512)" in capsys.readouterr().err
    assert bench.main(["--data", str(tiny_data), "--output", str(tmp_path / "cnn.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cnn_baseline: --output {tmp_path / 'cnn.pt'}: must end in .safetensors"
    state = tmp_path / "state.pt"
    torch.save({"epochs": 3}, state)
    argv = ["--data", str(tiny_data), "--batch-size", "8", "--cache-dir", str(tmp_path / "c"),
            "--state", str(state)]
    assert bench.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"cnn_baseline: {state}: a run of 3 epochs, not --epochs 18"
