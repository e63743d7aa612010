"""vit-translate and the ONNX translation export: a tiny model trained on the toy language
translates it, through PyTorch and through onnxruntime alike; awkward input is handled."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_translation_data import toy_pairs

from export.seq2seq_onnx import OnnxTranslator, export_seq2seq
from export.translate import TorchTranslator, format_alignment, load_translator, main
from training.text_data import Collate, TextTokenizers, encode, train_tokenizer
from vit.seq2seq import Seq2Seq, Seq2SeqConfig, save_seq2seq

REPO = Path(__file__).resolve().parents[1]
PAIRS = toy_pairs(200, seed=3)


def train_toy_model(path: Path) -> Path:
    """A tiny model that has learned the toy language (a few seconds on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = train_tokenizer([s for p in PAIRS for s in p], vocab_size=60)
        toks = TextTokenizers(tok, tok)
        ids = toks.special_ids()
        vocab = tok.get_vocab_size()
        cfg = Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **ids, dim=32, num_heads=4,
                            enc_depth=1, dec_depth=2, mlp_ratio=2.0, dropout=0.0, max_len=40,
                            share_embeddings=True)
        torch.manual_seed(0)
        model = Seq2Seq(cfg)
        src, tgt = encode(tok, [p[0] for p in PAIRS]), encode(tok, [p[1] for p in PAIRS])
        batch = Collate(ids["pad_id"], ids["bos_id"])(list(zip(src, tgt, [p[1] for p in PAIRS], strict=True)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            logits = model(batch["src"], batch["tgt_in"])
            target = batch["tgt_out"].flatten()
            loss = F.cross_entropy(logits.flatten(0, 1), target, ignore_index=ids["pad_id"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.05
        save_seq2seq(model.eval(), {**toks.to_record(), "val_bleu": None, "source": "toy"}, path)
        return path
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("toy") / "model.safetensors")


@pytest.fixture(scope="module")
def toy_onnx(toy_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "toy_onnx"
    report = export_seq2seq(toy_model, out, sentences=[p[0] for p in PAIRS[:40]])
    assert report["identical"] == report["sentences"] == 40
    assert report["max_cross_weight_diff"] < 1e-4
    return out


def test_torch_translator_translates_greedy_and_beam(toy_model: Path) -> None:
    translator = load_translator(toy_model)
    assert isinstance(translator, TorchTranslator)
    sources, targets = [p[0] for p in PAIRS[:12]], [p[1] for p in PAIRS[:12]]
    for beam in (1, 4):
        out = translator.translate(sources, beam=beam, batch_size=5)
        assert [t.text for t in out] == targets


def test_alignment_shapes_and_table(toy_model: Path) -> None:
    translator = load_translator(toy_model)
    for beam in (1, 3):
        (t,) = translator.translate([PAIRS[0][0]], beam=beam, alignment=True)
        n_layers, n_out, n_src = t.alignment.shape
        assert (n_layers, n_out, n_src) == (2, len(t.out_tokens), len(t.src_tokens))
        assert t.out_tokens[-1] == "<eos>" and t.src_tokens[-1] == "<eos>"
        np.testing.assert_allclose(t.alignment.sum(-1), 1.0, atol=1e-5)
    table = format_alignment(t, layer=-1).splitlines()
    assert len(table) == 1 + n_src  # header + one row per source token


def test_empty_long_and_unknown_input_do_not_crash(toy_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    translator = load_translator(toy_model)
    long = " ".join(["der hund läuft"] * 40)
    with caplog.at_level(logging.WARNING):
        out = translator.translate(["", "   ", long, "Der Hund ☃ läuft 日本 ?!", PAIRS[1][0]], alignment=True)
    assert out[0].text == "" and out[1].text == "" and out[0].alignment.shape == (2, 0, 0)
    assert out[2].truncated and len(out[2].src_tokens) == 40
    assert "truncated to the model's max_len 40" in caplog.text
    assert isinstance(out[3].text, str) and "<unk>" in out[3].src_tokens
    assert out[4].text == PAIRS[1][1]
    assert translator.translate([]) == []


def test_cli_sentences_file_stdin_and_errors(toy_model: Path, tmp_path: Path, capsys, monkeypatch) -> None:
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
    assert "--alignment-layer 5 is out of range" in capsys.readouterr().err


def test_onnx_greedy_equals_torch(toy_model: Path, toy_onnx: Path) -> None:
    onnx_tr, torch_tr = load_translator(toy_onnx), load_translator(toy_model)
    assert isinstance(onnx_tr, OnnxTranslator)
    sources = [p[0] for p in PAIRS[40:80]] + ["", "Der Hund ☃ läuft 日本", " ".join(["ein kind"] * 30)]
    a = onnx_tr.translate(sources, batch_size=7, alignment=True)
    b = torch_tr.translate(sources, batch_size=7, alignment=True)
    assert [t.out_tokens for t in a] == [t.out_tokens for t in b]
    assert [t.text for t in a[:40]] == [p[1] for p in PAIRS[40:80]]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.alignment, y.alignment, atol=1e-4)
    with pytest.raises(ValueError, match="decodes greedily"):
        onnx_tr.translate(["x"], beam=2)


def test_onnx_serving_imports_no_torch(toy_onnx: Path) -> None:
    code = (
        "import sys\n"
        "from export.translate import main\n"
        f"main(['--model', {str(toy_onnx)!r}, {PAIRS[5][0]!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == PAIRS[5][1]
