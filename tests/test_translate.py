"""vit-translate (export/translate.py): sentences from arguments, a file or stdin; the
cross-attention table (``--attention``, alias ``--alignment``); one-line errors; and
load_translator, which picks the back end from the path."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
from conftest import PAIRS, run_cli

from export.onnx_translator import OnnxTranslator
from export.torch_translator import TorchTranslator
from export.translate import format_attention, load_translator, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_sentences_file_stdin_and_errors(toy_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    main(["--model", str(toy_model), PAIRS[0][0], PAIRS[1][0]])
    assert capsys.readouterr().out.splitlines() == [PAIRS[0][1], PAIRS[1][1]]
    text = tmp_path / "in.de"
    text.write_text(f"{PAIRS[2][0]}\n\n{PAIRS[3][0]}\n", encoding="utf-8")
    main(["--model", str(toy_model), "--input", str(text), "--beam", "3"])
    assert capsys.readouterr().out.splitlines() == [PAIRS[2][1], "", PAIRS[3][1]]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PAIRS[4][0] + "\n"))
    main(["--model", str(toy_model), "--alignment", "--alignment-layer", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == PAIRS[4][1] and "<eos>" in lines[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "missing.ckpt"), "x"])
    assert exit_info.value.code == 2
    assert "missing.ckpt: no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(toy_model), "--alignment", "--alignment-layer", "5", "x"])
    assert "--attention-layer 5 is out of range" in capsys.readouterr().err  # the option's new name


def test_attention_flag_prints_a_table_per_sentence(toy_model: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--model", str(toy_model), "--attention", "--beam", "2", PAIRS[6][0]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == PAIRS[6][1] and lines[-1] == ""
    (t,) = load_translator(toy_model).translate([PAIRS[6][0]], beam=2, return_attention=True)
    assert lines[1:-1] == format_attention(t, -1).splitlines()


def test_attention_table(toy_model: Path) -> None:
    (t,) = load_translator(toy_model).translate([PAIRS[0][0]], beam=3, return_attention=True)
    n_layers, n_out, n_src = t.attention.shape
    table = format_attention(t, layer=-1).splitlines()
    assert len(table) == 1 + n_src  # header + one row per source token
    assert table[0].split()[-1] == "<eos>" and table[-1].split()[0] == "<eos>"
    for row, weights in zip(table[1:], t.attention[-1].T, strict=True):  # (S, T): percent, rounded
        assert [int(v) for v in row.split()[1:]] == [round(100 * w) for w in weights]
    assert format_attention(t, layer=0) != format_attention(t, layer=1)
    empty = load_translator(toy_model).translate([""], return_attention=True)[0]
    assert format_attention(empty, 0) == "(no attention)"


def test_load_translator_picks_the_back_end(toy_model: Path, toy_onnx: Path, tmp_path: Path) -> None:
    assert isinstance(load_translator(toy_onnx), OnnxTranslator)
    folder = tmp_path / "checkpoint_folder"
    folder.mkdir()
    shutil.copy(toy_model, folder / "model.safetensors")
    translator = load_translator(folder)
    assert isinstance(translator, TorchTranslator) and translator.num_layers == 2
    assert translator.translate([PAIRS[2][0]])[0].text == PAIRS[2][1]
    with pytest.raises(FileNotFoundError, match="neither encoder.onnx nor model.safetensors"):
        load_translator(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such model file"):
        load_translator(tmp_path / "missing.ckpt")


def test_without_model_uses_the_shipped_one_or_says_what_to_do(toy_onnx: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import export.translate as translate

    monkeypatch.setattr(translate, "DEFAULT_TRANSLATOR", tmp_path / "none")
    out = run_cli(translate.main, ["Ein Hund"])
    assert out.status == 2 and "no translation model at" in out.err and "vit-export" in out.err
    monkeypatch.setattr(translate, "DEFAULT_TRANSLATOR", toy_onnx)
    out = run_cli(translate.main, ["--provider", "cpu", "ein hund läuft"])
    assert out.status in (0, None) and out.out.strip()
