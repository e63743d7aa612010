"""Evaluating an exported classifier (export/evaluate.py, ``python -m export.evaluate``): the
data module's validation split, accuracy and the confusion matrix, written as JSON and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder

from export.evaluate import evaluate, main
from export.onnx_classifier import OnnxClassifier
from vit.errors import DataError
from vit.image_folder import scan_folder, split_indices


def test_evaluate_the_validation_split(tiny_onnx: Path, tiny_data: Path) -> None:
    clf = OnnxClassifier(tiny_onnx)
    result = evaluate(clf, tiny_data, val_fraction=0.25, seed=3, batch_size=4)
    index = scan_folder(tiny_data)
    _, val = split_indices(index.labels, 0.25, 3)
    confusion = np.array(result["confusion"])
    assert result["images"] == len(val) == 9 and confusion.sum() == 9
    assert confusion.sum(axis=1).tolist() == [3, 3, 3]  # rows: the true classes of the split
    preds = [clf.predict(index.files[i])[0].labels[0] for i in val]
    truth = [index.class_names[index.labels[i]] for i in val]
    assert result["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(preds, truth, strict=True)]))
    assert result["class_names"] == list(result["per_class"]) == ["circle", "square", "stripes"]
    assert (result["val_fraction"], result["seed"]) == (0.25, 3)


def test_main_writes_json_and_png(tiny_onnx: Path, tiny_data: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", str(tiny_onnx), "--data", str(tiny_data), "--val-fraction", "0.25",
                 "--out", str(tmp_path / "card")]) == 0
    result = json.loads((tmp_path / "card" / "evaluation.json").read_text())
    assert result["images"] == 9 and set(result) >= {"accuracy", "per_class", "confusion"}
    assert (tmp_path / "card" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "card").iterdir()) == ["confusion.png", "evaluation.json"]
    assert f"validation accuracy {result['accuracy']:.4f} on 9 images" in capsys.readouterr().out


def test_other_classes_are_a_clear_error(tiny_onnx: Path, tmp_path: Path) -> None:
    other = make_image_folder(tmp_path / "other", per_class=2, classes=("cat", "dog"))
    with pytest.raises(DataError, match="differ from the model's"):
        evaluate(OnnxClassifier(tiny_onnx), other, 0.5, 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tiny_onnx), "--data", str(other), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
