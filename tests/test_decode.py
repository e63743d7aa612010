"""benchmarks/decode.py: the decoding-speed table. Its rows are labelled as documented, every
measured speed is a finite positive number, and the cached, uncached and ONNX runs it times
generate the same tokens (exactly the requested number). No speed target is asserted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decode_benchmark_table_rows_numbers_and_tokens() -> None:
    bench = load_benchmark("decode")
    model = tiny_model()
    rows = bench.run(model, batch=2, lengths={"short": 4, "long": 10}, beam=2, repeats=1, uncached=True)
    assert [(r["batch"], r["sentences"], r["method"]) for r in rows] == [
        (2, "short (4 tok)", "greedy"), (2, "short (4 tok)", "beam 2"), (2, "long (10 tok)", "greedy"),
        (2, "long (10 tok)", "beam 2")]
    assert all("same tokens" not in r for r in rows)  # no ONNX column asked for
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
    cfg = load_benchmark("decode").random_model(vocab=50).config
    assert (cfg.dim, cfg.num_heads, cfg.enc_depth, cfg.dec_depth, cfg.max_len) == (256, 4, 3, 3, 256)
    assert cfg.share_embeddings and cfg.src_vocab_size == cfg.tgt_vocab_size == 50


def test_time_all_takes_turns_and_returns_medians_and_results() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name) or name.upper()) for name in "abc"}
    seconds, results = load_benchmark("decode").time_all(fns, repeats=3)
    # a warm-up round, then 3 rounds, the functions in turn, each round starting one further along
    assert calls == list("abc" "bca" "cab" "abc")
    assert results == {"a": "A", "b": "B", "c": "C"} and all(s >= 0 for s in seconds.values())


def test_onnx_rows_time_the_same_tokens(toy_model: Path, toy_onnx: Path) -> None:
    """With ``onnx``, every row also times the exported model with and without I/O binding,
    which generates the tokens PyTorch does."""
    from vit.checkpoint import load_seq2seq

    bench = load_benchmark("decode")
    model = load_seq2seq(toy_model)[0]
    steppers = bench.onnx_steppers(toy_onnx, threads=1)
    assert {c: s.io_binding for c, s in steppers.items()} == {"onnx io": True, "onnx run": False}
    rows = bench.run(model, batch=2, lengths={"short": 5}, beam=2, repeats=1, onnx=steppers)
    for r in rows:
        assert "no cache" not in r and "speed-up" not in r
        for column in steppers:
            assert math.isfinite(r[column]) and r[column] > 0
            assert r[f"{column} vs cache"] == pytest.approx(r[column] / r["cache"])
        assert r["same tokens"] is True  # both ONNX variants generated PyTorch's tokens


def test_main_prints_one_table_for_all_batches(toy_model: Path, toy_onnx: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The command line: two batch sizes in one table, the mean of several checkpoints as the
    model (here the same one twice, so ONNX still generates its tokens)."""
    bench = load_benchmark("decode")
    bench.main(["--model", str(toy_model), str(toy_model), "--onnx", str(toy_onnx), "--uncached",
                "--batch", "1", "3", "--short", "3", "--long", "4", "--repeats", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("decoding, 1 threads,")
    assert lines[1] == ("| batch | sentences | method | PyTorch cache | no cache | speed-up | onnx io | "
                        "onnx io vs cache | onnx run | onnx run vs cache | same tokens |")
    body = [line.split(" | ") for line in lines[3:]]
    assert [(b[0], b[1], b[2]) for b in body] == [
        (f"| {batch}", f"{name} ({n} tok)", method) for batch in (1, 3)
        for name, n in (("short", 3), ("long", 4)) for method in ("greedy", "beam 4")]
    assert all(b[-1] == "yes |" for b in body)
