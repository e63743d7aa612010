"""Decoding speed of the translation model: greedy and beam search, with and without the KV
cache, on short and long sentences, in PyTorch eager and (``--onnx``) through the exported
encoder and cached decoder on onnxruntime. Prints a table of generated tokens per second.

    python -m benchmarks.decode                                   # Multi30k-size random model
    python -m benchmarks.decode --model CKPT --onnx EXPORTED_DIR --batch 1 --threads 1
    python -m benchmarks.decode --onnx auto                       # exports the model it measures

Every run generates exactly ``--short``/``--long`` tokens per sentence (EOS is blocked until
the last step), from random source sentences of the same length, so that the cached and
uncached runs do the same work. Tokens/s counts output tokens (B x T; a beam's hypotheses
are not counted), median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vit.checkpoint import load_seq2seq
from vit.decoding import beam_search, greedy_decode
from vit.seq2seq import Seq2Seq, Seq2SeqConfig


def random_model(vocab: int = 8000) -> Seq2Seq:
    """The multi30k.yaml architecture with random weights (speed does not depend on them)."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=0, bos_id=1, eos_id=2, dim=256,
                        num_heads=4, enc_depth=3, dec_depth=3, max_len=256, share_embeddings=True)
    return Seq2Seq(cfg).eval()


def time_it(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode(model: Any, src: torch.Tensor, method: str, beam: int, use_cache: bool) -> object:
    """``model``: a :class:`Seq2Seq` or any :class:`vit.decoding.Stepper` (the ONNX one)."""
    n = src.shape[1]
    kw = dict(max_len=n, min_len=n - 1, use_cache=use_cache)  # exactly n output tokens
    if method == "greedy":
        return greedy_decode(model, src, **kw)
    return beam_search(model, src, beam_size=beam, length_penalty=0.6, **kw)


def run(model: Seq2Seq, *, batch: int, lengths: dict[str, int], beam: int, repeats: int,
        onnx: Any = None) -> list[dict]:
    """One row per sentence length and method: tokens/s of PyTorch with and without the cache
    and, given ``onnx`` (a stepper over the same model's export), of onnxruntime."""
    rows = []
    vocab = model.config.src_vocab_size
    for name, n in lengths.items():
        src = torch.randint(4, vocab, (batch, n), generator=torch.Generator().manual_seed(0))  # (B, S)
        for method in ("greedy", f"beam {beam}"):
            speed = {cache: batch * n / time_it(partial(decode, model, src, method, beam, cache), repeats)
                     for cache in (True, False)}
            row = {"sentences": f"{name} ({n} tok)", "method": method, "cache": speed[True],
                   "no cache": speed[False], "speed-up": speed[True] / speed[False]}
            if onnx is not None:
                onnx_run = partial(decode, onnx, src.numpy(), method, beam, True)
                row["onnx"] = batch * n / time_it(onnx_run, repeats)
                row["onnx vs cache"] = row["onnx"] / row["cache"]
            rows.append(row)
    return rows


def onnx_stepper(folder: Path, threads: int) -> Any:
    """The ONNX translator's stepper on ``folder``, onnxruntime with ``threads`` threads."""
    import onnxruntime as ort

    from export.onnx_translator import OnnxStepper

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    config = json.loads((folder / "seq2seq.json").read_text(encoding="utf-8"))["config"]
    sessions = [ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                for name in ("encoder.onnx", "decoder.onnx")]
    return OnnxStepper(*sessions, config)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="translation checkpoint (default: random Multi30k-size model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--short", type=int, default=16, help="source and output tokens of short sentences")
    p.add_argument("--long", type=int, default=96, help="source and output tokens of long sentences")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--onnx", help="the model's exported folder (vit-export), or 'auto' to export it first")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_seq2seq(args.model)[0] if args.model else random_model()
    onnx = None
    if args.onnx:
        folder = Path(args.onnx)
        if args.onnx == "auto":
            from export.seq2seq_onnx import export_onnx

            folder = Path(tempfile.mkdtemp(prefix="decode-bench-"))
            export_onnx(model, folder)
            (folder / "seq2seq.json").write_text(json.dumps({"config": model.config.to_dict()}))
        onnx = onnx_stepper(folder, torch.get_num_threads())
    if args.long > model.config.max_len:
        p.error(f"--long {args.long} exceeds the model's max_len {model.config.max_len}")
    with torch.inference_mode():
        rows = run(model, batch=args.batch, lengths={"short": args.short, "long": args.long}, beam=args.beam,
                   repeats=args.repeats, onnx=onnx)
    print(f"decoding, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{model.num_params() / 1e6:.1f}M parameters; generated tokens/s (median of {args.repeats})")
    extra = " onnxruntime | onnxruntime vs cache |" if onnx is not None else ""
    print("| sentences | method | cache | no cache | speed-up |" + extra)
    print("|---|---|---:|---:|---:|" + ("---:|---:|" if onnx is not None else ""))
    for r in rows:
        tail = f" {r['onnx']:.0f} | {r['onnx vs cache']:.2f}x |" if onnx is not None else ""
        print(f"| {r['sentences']} | {r['method']} | {r['cache']:.0f} | {r['no cache']:.0f} "
              f"| {r['speed-up']:.1f}x |" + tail)


if __name__ == "__main__":
    main()
