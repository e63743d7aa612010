"""Files written by an earlier release (tests/data/compat, see its README) still load and
give the same outputs: Lightning checkpoints, safetensors and ONNX files of both models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_classifier import OnnxClassifier
from export.torch_translator import TorchTranslator
from export.translate import load_translator
from vit.checkpoint import load_seq2seq, load_vit
from vit.decoding import beam_search, greedy_decode

DATA = Path(__file__).resolve().parent / "data" / "compat"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit_ref() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "vit_reference.npz"))


@pytest.fixture(scope="module")
def text_ref() -> tuple[dict[str, np.ndarray], dict]:
    texts = json.loads((DATA / "seq2seq_reference.json").read_text(encoding="utf-8"))
    return dict(np.load(DATA / "seq2seq_reference.npz")), texts


@pytest.mark.parametrize("name", ["vit_conv.ckpt", "vit_conv.safetensors"])
def test_vit_checkpoints_give_the_recorded_outputs(name: str, vit_ref: dict) -> None:
    model, record = load_vit(DATA / name)
    assert record["config"]["stem"] == "conv" and record["class_names"] == ["circle", "square", "stripes"]
    with torch.no_grad():
        logits, weights = model(torch.from_numpy(vit_ref["inputs"]), return_attention=True)
    np.testing.assert_allclose(logits.numpy(), vit_ref["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.stack(weights, 1).numpy(), vit_ref["attention"], atol=1e-6, rtol=0)


def test_patch_vit_with_class_token_and_layer_scale(vit_ref: dict) -> None:
    model, record = load_vit(DATA / "vit_patch.safetensors")
    assert record["config"]["class_token"] and record["config"]["layer_scale_init"] == 0.1
    with torch.no_grad():
        logits, weights = model(torch.from_numpy(vit_ref["inputs"]), return_attention=True)
    np.testing.assert_allclose(logits.numpy(), vit_ref["patch_logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.stack(weights, 1).numpy(), vit_ref["patch_attention"], atol=1e-6, rtol=0)


def test_vit_onnx_file_serves_the_recorded_outputs(vit_ref: dict) -> None:
    clf = OnnxClassifier(DATA / "vit_conv.onnx")
    assert clf.info.class_names == ["circle", "square", "stripes"] and clf.info.has_attention
    out = clf.predict_batch(vit_ref["inputs"])
    np.testing.assert_allclose(out["logits"], vit_ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["attention"], vit_ref["attention"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["seq2seq.ckpt", "seq2seq.safetensors"])
def test_translator_checkpoints_decode_the_recorded_tokens(name: str, text_ref: tuple) -> None:
    arrays, texts = text_ref
    model, record = load_seq2seq(DATA / name)
    src = torch.from_numpy(arrays["src"])
    greedy = greedy_decode(model, src, return_attention=True)
    np.testing.assert_array_equal(greedy.tokens, arrays["greedy"])
    np.testing.assert_allclose(greedy.scores, arrays["greedy_scores"], atol=1e-4)
    np.testing.assert_allclose(greedy.attention, arrays["cross_attention"], atol=1e-5)
    beam = beam_search(model, src, beam_size=3)
    np.testing.assert_array_equal(beam.tokens, arrays["beam"])
    np.testing.assert_allclose(beam.scores, arrays["beam_scores"], atol=1e-4)
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(arrays["tgt_in"]), model.encode(src)).logits
    np.testing.assert_allclose(logits.numpy(), arrays["logits"], atol=1e-4, rtol=0)
    translator = TorchTranslator(model, record)
    assert [t.text for t in translator.translate(texts["sentences"])] == texts["translations"]
    assert [t.text for t in translator.translate(texts["sentences"], beam=3)] == texts["beam3"]


def test_translator_onnx_folder_translates_as_recorded(text_ref: tuple) -> None:
    _, texts = text_ref
    translator = load_translator(DATA / "seq2seq_onnx")
    assert [t.text for t in translator.translate(texts["sentences"])] == texts["translations"]
    assert [t.text for t in translator.translate(texts["sentences"], beam=3)] == texts["beam3"]
