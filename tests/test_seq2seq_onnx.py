"""The translator's ONNX exporter and verifier (export/seq2seq_onnx.py): the folder it writes,
its graphs' inputs and outputs, and the verification that ONNX greedy decoding gives
PyTorch's tokens. The export itself is the session's ``toy_export`` (vit-export)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import PAIRS, CliRun

from export.metadata import OPSET
from export.onnx_translator import OnnxTranslator
from export.seq2seq_onnx import _sample_sentences, verify
from vit.checkpoint import load_seq2seq

pytestmark = pytest.mark.usefixtures("one_thread")


def test_export_is_verified_against_pytorch(toy_export: tuple[Path, CliRun], toy_ckpt: Path) -> None:
    folder, run = toy_export
    meta = json.loads((folder / "seq2seq.json").read_text(encoding="utf-8"))
    report = meta["verification"]
    assert report["identical"] == report["sentences"] == 40
    assert report["max_cross_weight_diff"] < 1e-4
    assert json.loads(run.out[: run.out.rindex("}") + 1]) == report  # what vit-export printed
    model, record = load_seq2seq(toy_ckpt)
    assert meta["config"] == model.config.to_dict() and meta["opset"] == OPSET
    assert meta["checkpoint"] == str(toy_ckpt) and meta["source"] == record["source"] == "toy"
    mask = os.umask(0)
    os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask  # not the temporary folder's 0700
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o666 & ~mask}


def test_graph_inputs_and_outputs(toy_onnx: Path) -> None:
    encoder = ort.InferenceSession(str(toy_onnx / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(toy_onnx / "decoder.onnx"), providers=["CPUExecutionProvider"])
    layers = 2
    cross = [f"cross_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    assert [i.name for i in encoder.get_inputs()] == ["src_ids"]
    assert [o.name for o in encoder.get_outputs()] == cross
    assert [i.name for i in decoder.get_inputs()] == ["tokens", "src_keep", *cross, *past]
    present = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    assert [o.name for o in decoder.get_outputs()] == ["logits", *present, "cross_weights"]


def test_verify_compares_greedy_tokens(toy_model: Path, toy_onnx: Path) -> None:
    model, _ = load_seq2seq(toy_model)
    translator = OnnxTranslator(toy_onnx)
    sentences = [p[0] for p in PAIRS[100:110]] + ["", "Der Hund ☃ läuft 日本"]
    report = verify(model, translator, sentences, batch_size=4)
    assert report["sentences"] == 11 and report["identical"] == 11  # the empty sentence is not decoded
    assert report["max_cross_weight_diff"] < 1e-4
    random = _sample_sentences(translator.codec, count=5)
    assert len(random) == 5 and all(isinstance(s, str) and s for s in random)
    assert verify(model, translator, random)["identical"] == 5


