"""vit-predict (export/predict.py): per-file errors, JSON lines and flat CSV output written
atomically with normal permissions, the summary on stderr, output paths refused before any
work, one line for bad inputs, a closed pipe, the default model."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
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
        scores = [p["score"] for p in record["predictions"]]
        assert list(record) == ["path", "predictions"] and len(scores) == 2 and scores[0] >= scores[1]
        assert {p["label"] for p in record["predictions"]} <= {"circle", "square", "stripes"}
    for record, path in zip(records[1:5], bad_files.values(), strict=True):
        assert record["error"].startswith(f"{path}: ") and "predictions" not in record
    assert "no such file" in records[6]["error"]
    assert re.fullmatch(r"vit-predict: 2 images classified, 5 failed, 0 non-image files skipped "
                        r"in \d+\.\d s, \d+\.\d img/s on (onnxruntime|OpenVINO) .+", err.strip())


def test_predict_cli_writes_jsonl_and_csv_atomically(tiny_onnx: Path, tiny_data: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out" / "preds.jsonl"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square")]) == 0
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "square"), "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all(len(r["predictions"]) == 3 for r in records)
    table = tmp_path / "preds.csv"
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data / "circle"), "--top-k", "2",
                         "-o", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0]) == ["path", "label", "score", "label_2", "score_2", "error"]
    assert len(rows) == 12 and rows[0]["label"] in ("circle", "square", "stripes")
    assert float(rows[0]["score"]) >= float(rows[0]["score_2"]) and rows[0]["error"] == ""
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temp files left


def test_written_files_get_normal_permissions(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_onnx), str(sorted(tiny_data.rglob("*.png"))[0]), "-o"]
    old = os.umask(0o022)
    try:
        assert predict.main([*args, str(tmp_path / "new.jsonl")]) == 0
        assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o644  # the umask's
        kept = tmp_path / "kept.csv"
        kept.write_text("old")
        kept.chmod(0o640)
        assert predict.main([*args, str(kept)]) == 0
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and "score" in kept.read_text()  # the old file's
    finally:
        os.umask(old)


@pytest.mark.parametrize("target,message", [
    ("out.parquet", "unknown output format '.parquet'; use .jsonl, .json, .csv"),
    ("folder", "is a folder; give a file name"),
    ("a_file/out.jsonl", "cannot create it below {tmp}/a_file, which is a file"),
    ("read_only/out.jsonl", "cannot write there (Permission denied)"),
])
def test_bad_output_paths_fail_before_any_work(tiny_onnx: Path, tiny_data: Path, tmp_path: Path, target: str,
                                               message: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "read_only").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere: a folder that refuses files, as a read-only mount does
        real = tempfile.mkstemp

        def refuse(*args, dir: str, **kwargs):  # noqa: A002 -- tempfile's name
            if Path(dir).name == "read_only":
                raise PermissionError(13, "Permission denied", dir)
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(predict.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(predict.OnnxClassifier, "__init__", lambda *a, **k: pytest.fail("work was started"))
    assert predict.main(["--model", str(tiny_onnx), str(tiny_data), "-o", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err and err.startswith("vit-predict: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file", "folder", "read_only"]


def test_closed_pipe_ends_quietly(tiny_onnx: Path, tiny_data: Path) -> None:
    args = ["--model", str(tiny_onnx), "--batch-size", "1", *[str(tiny_data)] * 40]
    code = f"import sys; from export.predict import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and json.loads(first)["predictions"]
    assert err == ""


def test_bad_inputs_get_one_line(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    assert predict.main(["--model", str(tiny_checkpoint), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"vit-predict: {tiny_checkpoint} is a training checkpoint; export it first with "
                   f"`vit-export {tiny_checkpoint} -o model.onnx`, then run vit-predict --model model.onnx\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert predict.main(["--model", str(tiny_onnx), str(tmp_path / "empty"), str(tmp_path / "loop")]) == 1
    out, err = capsys.readouterr()
    empty, loop = str(tmp_path / "empty"), str(tmp_path / "loop")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"path": empty, "error": f"{empty}: folder has no image files (1 other file)"},
        {"path": loop, "error": f"{loop}: symlink loop (the link resolves back to itself)"},
    ]
    assert "0 images classified, 2 failed, 1 non-image file skipped" in err and "nothing to classify" in err
    with pytest.raises(SystemExit):
        predict.main(["--model", str(tiny_onnx), "--top_k", "3", str(tmp_path)])
    assert "unrecognized arguments: --top_k (did you mean --top-k?)" in capsys.readouterr().err


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


def test_help_shows_defaults_and_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    assert "classes per image (default: 5)" in text and "``" not in text and ":mod:" not in text
    with pytest.raises(SystemExit):
        predict.main(["--version"])
    assert re.fullmatch(r"vit-predict \S+\n", capsys.readouterr().out)


def test_bad_arguments_are_refused(tiny_onnx: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    assert predict.main(["--model", str(tiny_onnx), "--top-k", "0", str(tiny_data)]) == 2
    assert "--top-k and --batch-size must be at least 1" in capsys.readouterr().err


def test_backend_and_precision_choose_the_runtime(tiny_onnx: Path, tiny_data: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    image = str(sorted(tiny_data.rglob("*.png"))[0])
    records = {}
    for backend in ("onnxruntime", "openvino"):
        args = ["--model", str(tiny_onnx), "--backend", backend, "--precision", "fp32", image]
        assert predict.main(args) == 0
        out, err = capsys.readouterr()
        records[backend] = json.loads(out)
        assert re.search(rf"img/s on {'OpenVINO' if backend == 'openvino' else 'onnxruntime'} \S+ "
                         r"\((CPU|CPUExecutionProvider), fp32\)$", err.strip())
    assert [p["label"] for p in records["openvino"]["predictions"]] == \
        [p["label"] for p in records["onnxruntime"]["predictions"]]
    assert predict.main(["--model", str(tiny_onnx), "--backend", "onnxruntime", "--precision", "bf16",
                         image]) == 2
    assert capsys.readouterr().err.startswith(f"vit-predict: {tiny_onnx}: precision bf16 is not available "
                                              "on onnxruntime on this machine (available: ")


def test_explain_adds_the_class_map_and_the_rollout(tiny_onnx_attention: Path, tiny_onnx: Path,
                                                    tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from export.onnx_classifier import OnnxClassifier

    clf = OnnxClassifier(tiny_onnx_attention)
    image = sorted((tiny_data / "square").glob("*.png"))[0]
    out = tmp_path / "explained.jsonl"
    assert predict.main(["--model", str(tiny_onnx_attention), str(image), "--explain", "-o", str(out)]) == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    top = record["predictions"][0]["label"]
    pixels = clf.preprocess(image)
    assert record["class_map"]["label"] == top and record["class_map"]["method"] == "rise"
    want = clf.class_map(pixels[0], clf.info.class_names.index(top))
    np.testing.assert_allclose(record["class_map"]["values"], want, atol=1e-4)
    assert record["rollout"]["method"] == "contribution" and clf.rollout_method == "contribution"
    np.testing.assert_allclose(record["rollout"]["values"], clf.rollout(pixels)[0], atol=1e-4)
    assert np.asarray(record["rollout"]["values"]).shape == clf.info.grid
    assert predict.main(["--model", str(tiny_onnx_attention), str(image), "--explain", "circle"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["class_map"]["label"] == "circle"
    # a file without attention still has its class map, and no rollout
    assert predict.main(["--model", str(tiny_onnx), str(image), "--explain"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert "class_map" in record and "rollout" not in record
    plain = ["--model", str(tiny_onnx), str(image), "--explain"]
    assert predict.main([*plain, "dog"]) == 2
    wrong = "--explain: 'dog' is not one of model.onnx's classes: circle, square, stripes"
    assert wrong in capsys.readouterr().err
    assert predict.main([*plain, "-o", str(tmp_path / "x.csv")]) == 2
    assert "write .jsonl instead" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
