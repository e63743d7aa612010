"""The onnxruntime back end of the translator (export/onnx_translator.py): greedy decoding and
beam search through the exported encoder and cached decoder give what PyTorch gives, on the
toy model and on the release's exported translator; serving imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COMPAT, PAIRS, REPO

from export.onnx_translator import OnnxStepper, OnnxTranslator
from export.translate import load_translator
from vit.checkpoint import load_seq2seq
from vit.decoding import TorchStepper, beam_search, greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_onnx_greedy_and_beam_equal_torch(toy_model: Path, toy_onnx: Path) -> None:
    onnx_tr, torch_tr = load_translator(toy_onnx), load_translator(toy_model)
    assert isinstance(onnx_tr, OnnxTranslator) and onnx_tr.num_layers == torch_tr.num_layers == 2
    sources = [p[0] for p in PAIRS[40:80]] + ["", "Der Hund ☃ läuft 日本", " ".join(["ein kind"] * 30)]
    a = onnx_tr.translate(sources, batch_size=7, return_attention=True)
    b = torch_tr.translate(sources, batch_size=7, return_attention=True)
    assert [t.out_tokens for t in a] == [t.out_tokens for t in b]
    assert [t.text for t in a[:40]] == [p[1] for p in PAIRS[40:80]]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.attention, y.attention, atol=1e-4)
    # beam search: ONNX decodes it too (on the same vit.decoding search), with the same result
    a = onnx_tr.translate(sources[:12], beam=3, batch_size=5, return_attention=True)
    b = torch_tr.translate(sources[:12], beam=3, batch_size=5, return_attention=True)
    assert [t.out_tokens for t in a] == [t.out_tokens for t in b]
    assert [t.text for t in a] == [p[1] for p in PAIRS[40:52]]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.attention, y.attention, atol=1e-4)


@pytest.fixture(scope="module")
def release_steppers() -> tuple[OnnxStepper, TorchStepper, np.ndarray]:
    """The release's exported translator and its checkpoint (tests/data/compat, read only), and
    its reference sentences as padded source ids."""
    onnx_tr = OnnxTranslator(COMPAT / "seq2seq_onnx")
    model, _ = load_seq2seq(COMPAT / "seq2seq.ckpt")
    sentences = json.loads((COMPAT / "seq2seq_reference.json").read_text())["sentences"]
    encoded = onnx_tr.codec.encode(sentences + [p[0] for p in PAIRS[:6]])
    src = onnx_tr.codec.pad([ids for ids, _ in encoded])
    return onnx_tr.stepper, TorchStepper(model), src


def test_onnx_and_torch_steppers_decode_identically(
        release_steppers: tuple[OnnxStepper, TorchStepper, np.ndarray]) -> None:
    onnx_stepper, torch_stepper, src = release_steppers
    assert onnx_stepper.rules == torch_stepper.rules
    assert (src == 0).any()  # padded rows: the source mask is exercised
    a = greedy_decode(onnx_stepper, src, return_attention=True)
    b = greedy_decode(torch_stepper, src, return_attention=True)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert a.attention.shape[2] == 1  # the ONNX decoder returns the head average
    np.testing.assert_allclose(a.attention[:, :, 0], b.attention.mean(axis=2), atol=1e-4)
    for width, alpha in ((3, 0.6), (4, 1.0)):
        a = beam_search(onnx_stepper, src, beam_size=width, length_penalty=alpha, return_attention=True)
        b = beam_search(torch_stepper, src, beam_size=width, length_penalty=alpha, return_attention=True)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.attention[:, :, 0], b.attention.mean(axis=2), atol=1e-4)


def test_onnx_stepper_state_and_errors(release_steppers: tuple[OnnxStepper, TorchStepper, np.ndarray],
                                       tmp_path: Path) -> None:
    stepper, _, src = release_steppers
    state = stepper.start(src[:3])
    assert state.feeds["past_key_0"].shape == (3, 4, 0, 8) and state.feeds["src_keep"].dtype == bool
    out = stepper.step(np.full((3, 1), 1), state, return_attention=True)
    assert out.logits.shape == (3, 60) and out.attention.shape == (3, 2, 1, src.shape[1])
    assert out.state.feeds["past_key_0"].shape == (3, 4, 1, 8)
    moved = stepper.reorder(out.state, np.array([2, 2, 0]))
    assert moved.rows.tolist() == [2, 2, 0]
    np.testing.assert_array_equal(moved.feeds["cross_key_1"], out.state.feeds["cross_key_1"][[2, 2, 0]])
    with pytest.raises(ValueError, match="always decodes on its cache"):
        stepper.step(np.full((3, 1), 1), state, use_cache=False, return_attention=False)
    with pytest.raises(FileNotFoundError, match="no seq2seq.json; not an exported translation model"):
        OnnxTranslator(tmp_path)
    torch.manual_seed(0)  # (the module imports torch only for the reference above)


def test_onnx_serving_imports_no_torch(toy_onnx: Path) -> None:
    code = (
        "import sys\n"
        "from export.translate import main\n"
        f"main(['--model', {str(toy_onnx)!r}, '--beam', '3', {PAIRS[5][0]!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == PAIRS[5][1]
