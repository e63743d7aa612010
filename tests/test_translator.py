"""Translation for people (export/translator.py): a tiny model trained on the toy language
translates it, greedy and beam; attention shapes; awkward input is handled."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import PAIRS

from export.torch_translator import TorchTranslator
from export.translate import load_translator
from export.translator import Translation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_torch_translator_translates_greedy_and_beam(toy_model: Path) -> None:
    translator = load_translator(toy_model)
    assert isinstance(translator, TorchTranslator)
    sources, targets = [p[0] for p in PAIRS[:12]], [p[1] for p in PAIRS[:12]]
    for beam in (1, 4):
        out = translator.translate(sources, beam=beam, batch_size=5)
        assert [t.text for t in out] == targets


def test_attention_shapes(toy_model: Path) -> None:
    translator = load_translator(toy_model)
    for beam in (1, 3):
        (t,) = translator.translate([PAIRS[0][0]], beam=beam, return_attention=True)
        assert isinstance(t, Translation) and t.attention.dtype == np.float32
        n_layers, n_out, n_src = t.attention.shape
        assert (n_layers, n_out, n_src) == (2, len(t.out_tokens), len(t.src_tokens))
        assert t.out_tokens[-1] == "<eos>" and t.src_tokens[-1] == "<eos>"
        np.testing.assert_allclose(t.attention.sum(-1), 1.0, atol=1e-5)
    (plain,) = translator.translate([PAIRS[0][0]])
    assert plain.attention is None and plain.text == t.text


def test_empty_long_and_unknown_input_do_not_crash(toy_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    translator = load_translator(toy_model)
    long = " ".join(["der hund läuft"] * 40)
    with caplog.at_level(logging.WARNING):
        out = translator.translate(["", "   ", long, "Der Hund ☃ läuft 日本 ?!", PAIRS[1][0]],
                                   return_attention=True)
    assert out[0].text == "" and out[1].text == "" and out[0].attention.shape == (2, 0, 0)
    assert out[2].truncated and len(out[2].src_tokens) == 40
    assert "truncated to the model's max_len 40" in caplog.text
    assert isinstance(out[3].text, str) and "<unk>" in out[3].src_tokens
    assert out[4].text == PAIRS[1][1]
    assert translator.translate([]) == []
    with pytest.raises(ValueError, match="beam must be >= 1"):
        translator.translate(["x"], beam=0)
