"""The onnxruntime back end of the translator (export/onnx_translator.py): greedy decoding and
beam search through the exported encoder and cached decoder give what PyTorch gives, on the
toy model and on the release's exported translator, with I/O binding and with plain
``session.run``; with I/O binding the K/V cache onnxruntime writes is the buffer the next
step reads (no copy, no ``session.run``); serving imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import COMPAT, PAIRS, REPO

from export.onnx_translator import OnnxStepper, OnnxTranslator
from export.translate import load_translator
from vit.checkpoint import load_seq2seq
from vit.decoding import TorchStepper, beam_search, greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("io_binding", [True, False])
def test_onnx_greedy_and_beam_equal_torch(toy_model: Path, toy_onnx: Path, io_binding: bool) -> None:
    onnx_tr, torch_tr = OnnxTranslator(toy_onnx, io_binding=io_binding), load_translator(toy_model)
    served = load_translator(toy_onnx)
    assert isinstance(served, OnnxTranslator) and served.stepper.io_binding  # the default
    assert onnx_tr.stepper.io_binding is io_binding and onnx_tr.num_layers == torch_tr.num_layers == 2
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


@pytest.fixture(scope="module", params=[True, False], ids=["io_binding", "session_run"])
def release_steppers(request: pytest.FixtureRequest) -> tuple[OnnxStepper, TorchStepper, np.ndarray]:
    """The release's exported translator (with and without I/O binding) and its checkpoint
    (tests/data/compat, read only), and its reference sentences as padded source ids."""
    onnx_tr = OnnxTranslator(COMPAT / "seq2seq_onnx", io_binding=request.param, intra_op_threads=1)
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
    assert state.array("past_key_0").shape == (3, 4, 0, 8) and state.array("src_keep").dtype == bool
    out = stepper.step(np.full((3, 1), 1), state, return_attention=True)
    assert out.logits.shape == (3, 60) and out.attention.shape == (3, 2, 1, src.shape[1])
    assert out.state.array("past_key_0").shape == (3, 4, 1, 8)
    cache = {type(v) for name, v in out.state.feeds.items() if name.startswith(("cross_", "past_"))}
    assert cache == {ort.OrtValue if stepper.io_binding else np.ndarray}  # binding: onnxruntime's buffers
    moved = stepper.reorder(out.state, np.array([2, 2, 0]))
    assert moved.rows.tolist() == [2, 2, 0]
    for name in ("cross_key_1", "past_value_0", "src_keep"):
        np.testing.assert_array_equal(moved.array(name), out.state.array(name)[[2, 2, 0]])
    kept = stepper.reorder(out.state, np.array([0, 1, 2]))  # the same sources: cross K/V not copied
    assert kept.feeds["cross_key_1"] is out.state.feeds["cross_key_1"]
    assert kept.feeds["past_key_0"] is not out.state.feeds["past_key_0"]
    with pytest.raises(ValueError, match="always decodes on its cache"):
        stepper.step(np.full((3, 1), 1), state, use_cache=False, return_attention=False)
    with pytest.raises(FileNotFoundError, match="no seq2seq.json; not an exported translation model"):
        OnnxTranslator(tmp_path)
    torch.manual_seed(0)  # (the module imports torch only for the reference above)


class _LoggedBinding:
    """An onnxruntime IOBinding that notes the address of every input it binds (``inputs``)
    and of every output onnxruntime gave it (``outputs``, in binding order)."""

    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self.inputs: dict[str, int] = {}
        self.outputs: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.binding, name)

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = array.ctypes.data
        self.binding.bind_cpu_input(name, array)

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.inputs[name] = value.data_ptr()
        self.binding.bind_ortvalue_input(name, value)

    def get_outputs(self) -> list[ort.OrtValue]:
        outputs = self.binding.get_outputs()
        self.outputs = [value.data_ptr() for value in outputs]
        return outputs


class _LoggedSession:
    """An onnxruntime session whose I/O bindings are :class:`_LoggedBinding`s, kept in
    ``calls`` in the order they ran; ``run`` (the path without binding) is refused."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.calls: list[_LoggedBinding] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("session.run called with I/O binding on")

    def io_binding(self) -> _LoggedBinding:
        return _LoggedBinding(self.session.io_binding())

    def run_with_iobinding(self, binding: _LoggedBinding) -> None:
        self.calls.append(binding)
        self.session.run_with_iobinding(binding.binding)


def test_io_binding_keeps_the_cache_where_onnxruntime_wrote_it() -> None:
    """Greedy: the past K/V of each decoder call are the buffers onnxruntime wrote the present
    K/V to at the call before, and the cross K/V those the encoder wrote them to -- no copy in
    between. Beam search: the cross K/V are gathered once (K rows per sentence), then read in
    place at every step."""
    translator = OnnxTranslator(COMPAT / "seq2seq_onnx", intra_op_threads=1)
    plain, config = translator.stepper, translator.config
    encoder, decoder = _LoggedSession(plain.encoder), _LoggedSession(plain.decoder)
    stepper = OnnxStepper(encoder, decoder, config)
    src = translator.codec.pad([ids for ids, _ in translator.codec.encode([p[0] for p in PAIRS[:3]])])
    state = stepper.start(src)
    written = dict(zip([o.name for o in plain.encoder.get_outputs()], encoder.calls[0].outputs, strict=True))
    tokens = np.full((3, 1), config["bos_id"])
    for t in range(4):
        out = stepper.step(tokens, state)
        call = decoder.calls[-1]
        for name in (f"{part}_{i}" for part in ("key", "value") for i in range(2)):
            assert call.inputs[f"cross_{name}"] == written[f"cross_{name}"]
            if t:
                assert call.inputs[f"past_{name}"] == written[f"present_{name}"]
        fetched = [o.name for o in plain.decoder.get_outputs() if o.name != "cross_weights"]
        written.update(zip(fetched, call.outputs, strict=True))
        state = out.state
        tokens = np.concatenate([tokens, out.logits.argmax(axis=1)[:, None]], axis=1)
    assert len(decoder.calls) == 4
    np.testing.assert_array_equal(greedy_decode(stepper, src).tokens, greedy_decode(plain, src).tokens)
    decoder.calls.clear()
    beam = beam_search(stepper, src, beam_size=3)
    assert len(decoder.calls) > 2 and len({call.inputs["cross_key_1"] for call in decoder.calls}) == 1
    np.testing.assert_array_equal(beam.tokens, beam_search(plain, src, beam_size=3).tokens)


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
