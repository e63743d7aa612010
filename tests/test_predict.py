"""vit-predict (export/predict.py): per-file errors, JSON lines and CSV output written
atomically, the default model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from export import predict
from vit.paths import DEFAULT_CLASSIFIER


def test_predict_cli_keeps_going_past_bad_files(tiny_onnx: Path, tiny_data: Path, bad_files: dict[str,
                                                Path], capsys: pytest.CaptureFixture) -> None:
    good = sorted((tiny_data / "circle").glob("*.png"))[:2]
    args = [str(good[0]), *map(str, bad_files.values()), str(good[1]), "missing/*.png"]
    assert predict.main(["--model", str(tiny_onnx), "--top-k", "2", "--batch-size", "3", *args]) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == args  # in order, one each
    for record in (records[0], records[5]):
        assert len(record["labels"]) == 2 and record["probabilities"][0] >= record["probabilities"][1]
    for record, path in zip(records[1:5], bad_files.values(), strict=True):
        assert record["error"].startswith(f"{path}: ") and "labels" not in record
    assert "no such file" in records[6]["error"]
    assert "5 of 7 inputs failed" in err


def test_predict_cli_writes_jsonl_and_csv_atomically(tiny_onnx: Path, tiny_data: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out" / "preds.jsonl"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square")]) == 0
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square"), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all(len(r["labels"]) == 3 for r in records)
    table = tmp_path / "preds.csv"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "circle"), "-o", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 12 and json.loads(rows[0]["labels"])[0] in ("circle", "square", "stripes")
    assert rows[0]["error"] == ""
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temp files left


def test_predict_cli_failure_keeps_an_existing_output(tiny_onnx: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier results\n")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)

    def crash(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict.OnnxClassifier, "predict_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["--model", str(tiny_onnx), str(image), "-o", str(out)])
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "preds.jsonl"]


def test_predict_cli_without_a_model_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(predict, "DEFAULT_CLASSIFIER", tmp_path / "models" / "cifar10_vit.onnx")
    assert predict.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vit-export" in err and "--model" in err
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x01garbage")
    assert predict.main(["--model", str(tmp_path / "broken.onnx"), str(tmp_path)]) == 2
    assert "broken.onnx: not a loadable ONNX model" in capsys.readouterr().err


def test_default_model_is_the_shipped_classifier() -> None:
    assert predict.DEFAULT_CLASSIFIER == DEFAULT_CLASSIFIER
    assert DEFAULT_CLASSIFIER.name == "cifar10_vit.onnx" and DEFAULT_CLASSIFIER.parent.name == "models"
    with pytest.raises(SystemExit):
        predict.main(["--help"])


def test_bad_arguments_are_refused(tiny_onnx: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    assert predict.main(["--model", str(tiny_onnx), "--top-k", "0", str(tiny_data)]) == 2
    assert "--top-k and --batch-size must be at least 1" in capsys.readouterr().err
