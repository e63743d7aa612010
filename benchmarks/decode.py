"""Decoding speed of the translation model: greedy and beam search at several batch sizes, in
PyTorch eager with the KV cache (and, ``--uncached``, without it) and (``--onnx``) through the
exported encoder and cached decoder on onnxruntime, with I/O binding (the serving default) and
with plain ``session.run``. Prints a table of generated tokens per second, with ratios against
PyTorch eager with the cache measured in the same run.

    python -m benchmarks.decode --uncached --batch 8              # Multi30k-size random model
    python -m benchmarks.decode --model CKPT --onnx EXPORTED_DIR --batch 1 32 --threads 1
    python -m benchmarks.decode --model A.ckpt B.ckpt --onnx DIR  # the mean of A and B (vit-export's)
    python -m benchmarks.decode --onnx auto                       # exports the model it measures

Every run generates exactly ``--short``/``--long`` tokens per sentence (EOS is blocked until
the last step), from random source sentences of the same length, so that all variants do the
same work. Tokens/s counts output tokens (B x T; a beam's hypotheses are not counted), median
of ``--repeats`` runs after one warm-up; the variants of a row take turns, in a rotating order,
so that a change in the machine's load and the caches left by the previous run reach them
alike. ``same tokens``: whether onnxruntime generated PyTorch's tokens (only expected when the
folder is the export of ``--model``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vit.checkpoint import average_checkpoints, load_seq2seq
from vit.decoding import Generation, beam_search, greedy_decode
from vit.seq2seq import Seq2Seq, Seq2SeqConfig

ONNX_VARIANTS = {"onnx io": True, "onnx run": False}  # column -> I/O binding


def random_model(vocab: int = 8000) -> Seq2Seq:
    """The multi30k.yaml architecture with random weights (speed does not depend on them)."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=0, bos_id=1, eos_id=2, dim=256,
                        num_heads=4, enc_depth=3, dec_depth=3, max_len=256, share_embeddings=True)
    return Seq2Seq(cfg).eval()


def time_all(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds of each function over ``repeats`` rounds after a warm-up round, and what
    each returned. Each round runs every function once, starting one further along each time:
    a function that runs right after another model finds the caches full of that model's
    weights, so no function may always be the one that does."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    names = list(fns)
    for round_ in range(repeats + 1):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            results[name] = fns[name]()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def decode(model: Any, src: Any, method: str, beam: int, use_cache: bool) -> Generation:
    """``model``: a :class:`Seq2Seq` or any :class:`vit.decoding.Stepper` (the ONNX one)."""
    n = src.shape[1]
    kw = dict(max_len=n, min_len=n - 1, use_cache=use_cache)  # exactly n output tokens
    if method == "greedy":
        return greedy_decode(model, src, **kw)
    return beam_search(model, src, beam_size=beam, length_penalty=0.6, **kw)


def run(model: Seq2Seq, *, batch: int, lengths: dict[str, int], beam: int, repeats: int,
        onnx: dict[str, Any] | None = None, uncached: bool = False) -> list[dict]:
    """One row per sentence length and method: tokens/s of PyTorch with the cache and, when
    ``uncached``, without it; given ``onnx`` (column -> a stepper over the same model's
    export, as :func:`onnx_steppers` makes), of each onnxruntime variant and its ratio to
    PyTorch with the cache."""
    rows = []
    vocab = model.config.src_vocab_size
    onnx = onnx or {}
    for name, n in lengths.items():
        src = torch.randint(4, vocab, (batch, n), generator=torch.Generator().manual_seed(0))  # (B, S)
        for method in ("greedy", f"beam {beam}"):
            fns: dict[str, Callable[[], Any]] = {"cache": partial(decode, model, src, method, beam, True)}
            if uncached:
                fns["no cache"] = partial(decode, model, src, method, beam, False)
            for column, stepper in onnx.items():
                fns[column] = partial(decode, stepper, src.numpy(), method, beam, True)
            seconds, out = time_all(fns, repeats)
            speed = {column: batch * n / s for column, s in seconds.items()}
            row = {"batch": batch, "sentences": f"{name} ({n} tok)", "method": method, **speed}
            if uncached:
                row["speed-up"] = speed["cache"] / speed["no cache"]
            for column in onnx:
                row[f"{column} vs cache"] = speed[column] / speed["cache"]
            if onnx:
                reference = out["cache"].tokens
                row["same tokens"] = all(np.array_equal(out[column].tokens, reference) for column in onnx)
            rows.append(row)
    return rows


def onnx_steppers(folder: Path, threads: int) -> dict[str, Any]:
    """The ONNX translator's steppers on ``folder`` by column (:data:`ONNX_VARIANTS`): one pair
    of onnxruntime sessions with ``threads`` threads, with and without I/O binding."""
    import onnxruntime as ort

    from export.onnx_translator import OnnxStepper, session_options

    config = json.loads((folder / "seq2seq.json").read_text(encoding="utf-8"))["config"]
    options = session_options(threads)
    encoder, decoder = (ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                        for name in ("encoder.onnx", "decoder.onnx"))
    return {column: OnnxStepper(encoder, decoder, config, io_binding=io)
            for column, io in ONNX_VARIANTS.items()}


def load_model(paths: Sequence[str]) -> Seq2Seq:
    """One checkpoint, or the mean of several (as ``vit-export`` averages them)."""
    if len(paths) == 1:
        return load_seq2seq(paths[0])[0]
    kind, model, _ = average_checkpoints(paths)
    if kind != "seq2seq":
        raise ValueError(f"{paths[-1]}: not a translation checkpoint")
    return model  # type: ignore[return-value]


def table(rows: list[dict], onnx: Sequence[str], uncached: bool) -> list[str]:
    """The rows as a Markdown table."""
    head = ["batch", "sentences", "method", "PyTorch cache"] + (["no cache", "speed-up"] if uncached else [])
    for column in onnx:
        head += [column, f"{column} vs cache"]
    head += ["same tokens"] if onnx else []
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [str(r["batch"]), r["sentences"], r["method"], f"{r['cache']:.0f}"]
        if uncached:
            cells += [f"{r['no cache']:.0f}", f"{r['speed-up']:.1f}x"]
        for column in onnx:
            cells += [f"{r[column]:.0f}", f"{r[f'{column} vs cache']:.2f}x"]
        cells += ["yes" if r["same tokens"] else "no"] if onnx else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", help="translation checkpoint, or several to average "
                   "(default: random Multi30k-size model)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--short", type=int, default=16, help="source and output tokens of short sentences")
    p.add_argument("--long", type=int, default=96, help="source and output tokens of long sentences")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--uncached", action="store_true",
                   help="also time PyTorch without the KV cache (minutes at batch 32)")
    p.add_argument("--onnx", help="the model's exported folder (vit-export), or 'auto' to export it first")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else random_model()
    if args.long > model.config.max_len:
        p.error(f"--long {args.long} exceeds the model's max_len {model.config.max_len}")
    onnx: dict[str, Any] = {}
    exported = None
    try:
        if args.onnx:
            folder = Path(args.onnx)
            if args.onnx == "auto":
                from export.seq2seq_onnx import export_onnx

                folder = exported = Path(tempfile.mkdtemp(prefix="decode-bench-"))
                export_onnx(model, folder)
                (folder / "seq2seq.json").write_text(json.dumps({"config": model.config.to_dict()}))
            onnx = onnx_steppers(folder, torch.get_num_threads())
        with torch.inference_mode():
            rows = [row for batch in args.batch
                    for row in run(model, batch=batch, lengths={"short": args.short, "long": args.long},
                                   beam=args.beam, repeats=args.repeats, onnx=onnx, uncached=args.uncached)]
    finally:
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    print(f"decoding, {torch.get_num_threads()} threads, {model.num_params() / 1e6:.1f}M parameters; "
          f"generated tokens/s (median of {args.repeats}); onnx io: onnxruntime with I/O "
          "binding (the serving default), onnx run: plain session.run")
    print("\n".join(table(rows, list(onnx), args.uncached)))


if __name__ == "__main__":
    main()
