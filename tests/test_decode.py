"""benchmarks/decode.py: the decoding-speed table. Its rows are labelled as documented, every
measured speed is a finite positive number, and the cached and uncached runs it times
generate the same tokens (exactly the requested number). No speed target is asserted."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_decode", REPO / "benchmarks" / "decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_table_rows_numbers_and_tokens() -> None:
    bench = load_benchmark()
    model = tiny_model()
    rows = bench.run(model, batch=2, lengths={"short": 4, "long": 10}, beam=2, repeats=1)
    assert [(r["sentences"], r["method"]) for r in rows] == [
        ("short (4 tok)", "greedy"), ("short (4 tok)", "beam 2"), ("long (10 tok)", "greedy"),
        ("long (10 tok)", "beam 2")]
    for r in rows:
        for key in ("cache", "no cache", "speed-up"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["speed-up"] == pytest.approx(r["cache"] / r["no cache"])
    # what the rows time: the same tokens with and without the cache, n of them per sentence
    for n in (4, 10):
        g = torch.Generator().manual_seed(0)
        src = torch.randint(4, model.config.src_vocab_size, (2, n), generator=g)
        for method in ("greedy", "beam 2"):
            cached = bench.decode(model, src, method, 2, True)
            uncached = bench.decode(model, src, method, 2, False)
            np.testing.assert_array_equal(cached.tokens, uncached.tokens)
            assert cached.tokens.shape == (2, n)
            assert (cached.tokens[:, -1] == model.config.eos_id).all()
            assert (cached.tokens[:, :-1] != model.config.eos_id).all()


def test_random_model_is_the_multi30k_architecture() -> None:
    cfg = load_benchmark().random_model(vocab=50).config
    assert (cfg.dim, cfg.num_heads, cfg.enc_depth, cfg.dec_depth, cfg.max_len) == (256, 4, 3, 3, 256)
    assert cfg.share_embeddings and cfg.src_vocab_size == cfg.tgt_vocab_size == 50


def test_onnx_rows_time_the_same_tokens(toy_model: Path, toy_onnx: Path) -> None:
    """With ``onnx``, every row also times the exported model, which generates the tokens
    PyTorch does."""
    from vit.checkpoint import load_seq2seq

    bench = load_benchmark()
    model = load_seq2seq(toy_model)[0]
    stepper = bench.onnx_stepper(toy_onnx, threads=1)
    rows = bench.run(model, batch=2, lengths={"short": 5}, beam=2, repeats=1, onnx=stepper)
    for r in rows:
        assert math.isfinite(r["onnx"]) and r["onnx"] > 0
        assert r["onnx vs cache"] == pytest.approx(r["onnx"] / r["cache"])
    src = torch.randint(4, model.config.src_vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    for method in ("greedy", "beam 2"):
        np.testing.assert_array_equal(bench.decode(stepper, src.numpy(), method, 2, True).tokens,
                                      bench.decode(model, src, method, 2, True).tokens)
