"""python -m export.bleu (export/bleu.py): sacreBLEU over a grid of decoding settings, and the
chosen setting written into an exported folder, which vit-translate then decodes with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import COMPAT, run_cli

from export.bleu import grid, main
from export.translate import load_translator


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    folder = tmp_path / "translator"
    shutil.copytree(COMPAT / "seq2seq_onnx", folder)
    return folder


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_grid_scores_every_setting_once(exported: Path) -> None:
    texts = json.loads((COMPAT / "seq2seq_reference.json").read_text(encoding="utf-8"))
    rows = grid(load_translator(exported), texts["sentences"], texts["translations"], [1, 2], [0.6, 1.0])
    assert [(r["beam"], r["length_penalty"]) for r in rows] == [(1, 0.6), (2, 0.6), (2, 1.0)]
    assert rows[0]["bleu"] == pytest.approx(100.0)  # the recorded greedy output is the reference
    for r in rows:
        assert 0 <= r["bleu"] <= 100 + 1e-9 and r["sentences"] == 4 and r["tokens_per_second"] > 0, r
    assert "tok:13a" in rows[0]["signature"]


def test_choose_writes_the_default_decoding(exported: Path, tmp_path: Path) -> None:
    texts = json.loads((COMPAT / "seq2seq_reference.json").read_text(encoding="utf-8"))
    src, ref = write(tmp_path / "s.de", texts["sentences"]), write(tmp_path / "s.en", texts["beam3"])
    out = run_cli(main, ["--model", str(exported), "--src", str(src), "--ref", str(ref), "--beam", "1", "3",
                         "--length-penalty", "0.6", "--choose", "-o", str(tmp_path / "rows.json")])
    assert out.status == 0 and "| 3 | 0.6 |" in out.out
    meta = json.loads((exported / "seq2seq.json").read_text(encoding="utf-8"))
    best = max(json.loads((tmp_path / "rows.json").read_text()), key=lambda r: r["bleu"])
    assert meta["decoding"] == {"beam": best["beam"], "length_penalty": 0.6}
    assert load_translator(exported).decoding["beam"] == best["beam"]  # vit-translate's default now


def test_bad_input_is_one_line(exported: Path, tmp_path: Path) -> None:
    src, ref = write(tmp_path / "s.de", ["a", "b"]), write(tmp_path / "s.en", ["a"])
    out = run_cli(main, ["--model", str(exported), "--src", str(src), "--ref", str(ref)])
    assert out.status == 2 and "has 2 lines" in out.err and "Traceback" not in out.err
    out = run_cli(main, ["--model", str(COMPAT / "seq2seq.ckpt"), "--src", str(src), "--ref", str(src),
                         "--choose"])
    assert out.status == 2 and "exported folder" in out.err
