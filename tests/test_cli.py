"""vit-export (export/cli.py): classifiers become a verified .onnx file, translators a verified
folder that vit-translate serves; nothing is written when verification fails; bad inputs
are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PAIRS, CliRun

from export import cli, vit_export
from export.metadata import SEQ2SEQ_FILES, read_metadata
from export.translate import main as translate_main
from export.verify import Tolerance
from vit.checkpoint import load_vit, save_vit


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_verification_writes_nothing(tmp_path: Path, tiny_checkpoint: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    impossible = Tolerance(atol=-1.0, rtol=0.0, min_top1_agreement=1.0, attention_atol=0.0, rollout_rtol=0.0,
                           contributions_atol=0.0)
    monkeypatch.setitem(vit_export.TOLERANCES, "fp32", impossible)
    assert cli.main([str(tiny_checkpoint), "-o", str(target), "--quantize", "int8"]) == 1
    assert "FAILED: max logit difference" in capsys.readouterr().out
    assert target.read_bytes() == b"previous model"
    assert not target.with_name("model.int8.onnx").exists() and _leftovers(tmp_path) == []


def test_cli_exports_safetensors_and_reports(tmp_path: Path, tiny_checkpoint: Path, tiny_data: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    model, record = load_vit(tiny_checkpoint)
    save_vit(model, record, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli.onnx"
    assert cli.main([str(tmp_path / "tiny.safetensors"), "-o", str(out), "--verify-images", str(tiny_data),
                     "--num-verify", "6"]) == 0
    text = capsys.readouterr().out
    assert "max|dlogit|=" in text and "images  n=6" in text and f"wrote {out}" in text
    assert read_metadata(out).class_names == record["class_names"]
    assert f"parity gate on 6 images from {tiny_data} against onnxruntime fp32" in text
    assert "\n  openvino     fp32" in text and "auto serves this file with " in text
    assert read_metadata(out).gate["count"] == 6
    assert cli.main([str(tmp_path / "tiny.safetensors"), "-o", str(out), "--verify-images", str(tiny_data),
                     "--num-verify", "6", "--no-gate"]) == 0
    assert "parity gate" not in capsys.readouterr().out and read_metadata(out).gate is None


def test_cli_bad_inputs_fail_with_one_line(tmp_path: Path, tiny_checkpoint: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert cli.main([str(tmp_path / "nope.ckpt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "nope.ckpt: no such checkpoint file" in capsys.readouterr().err
    assert cli.main([str(tiny_checkpoint), "-o", str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_translator_checkpoint_becomes_a_folder_vit_translate_serves(
        toy_export: tuple[Path, CliRun], capsys: pytest.CaptureFixture) -> None:
    """``vit-export last.ckpt -o DIR --verify-text FILE --num-verify 40`` (the session's toy_export)."""
    folder, run = toy_export
    assert run.status == 0 and "vit-export:" not in run.err and "Traceback" not in run.err  # (warnings aside)
    report = json.loads(run.out[: run.out.rindex("}") + 1])
    assert report["sentences"] == report["identical"] == 40  # --num-verify of the file's 50 lines
    assert run.out.rstrip().endswith(f"wrote {folder}")
    assert {p.name for p in folder.iterdir()} == {*SEQ2SEQ_FILES, "tokenizer.json"}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    translate_main(["--model", str(folder), PAIRS[0][0], PAIRS[1][0]])
    assert capsys.readouterr().out.splitlines() == [PAIRS[0][1], PAIRS[1][1]]


def test_translator_export_errors_are_one_line(tmp_path: Path, toy_ckpt: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert cli.main([str(toy_ckpt), "-o", str(tmp_path / "out"), "--verify-text",
                     str(tmp_path / "missing.de")]) == 2
    assert "missing.de" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unsupported_opset_is_refused_before_any_work(tmp_path: Path, tiny_checkpoint: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx"), "--opset", "7"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --opset: invalid choice: 7 (choose from 18, 19, 20, 21)" in err
    assert not (tmp_path / "m.onnx").exists()
