"""Decoding speed of the translation model: greedy and beam search, with and without the KV
cache, on short and long sentences. Prints a table of generated tokens per second.

    python -m benchmarks.decode                                   # Multi30k-size random model
    python -m benchmarks.decode --model runs/multi30k/checkpoints/last.ckpt --threads 2

Every run generates exactly ``--short``/``--long`` tokens per sentence (EOS is blocked until
the last step), from random source sentences of the same length, so that the cached and
uncached runs do the same work. Tokens/s counts output tokens (B x T; a beam's hypotheses
are not counted), median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

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


def decode(model: Seq2Seq, src: torch.Tensor, method: str, beam: int, use_cache: bool) -> object:
    n = src.shape[1]
    kw = dict(max_len=n, min_len=n - 1, use_cache=use_cache)  # exactly n output tokens
    if method == "greedy":
        return greedy_decode(model, src, **kw)
    return beam_search(model, src, beam_size=beam, length_penalty=0.6, **kw)


def run(model: Seq2Seq, *, batch: int, lengths: dict[str, int], beam: int, repeats: int) -> list[dict]:
    rows = []
    vocab = model.config.src_vocab_size
    for name, n in lengths.items():
        src = torch.randint(4, vocab, (batch, n), generator=torch.Generator().manual_seed(0))  # (B, S)
        for method in ("greedy", f"beam {beam}"):
            speed = {cache: batch * n / time_it(partial(decode, model, src, method, beam, cache), repeats)
                     for cache in (True, False)}
            rows.append({"sentences": f"{name} ({n} tok)", "method": method, "cache": speed[True],
                         "no cache": speed[False], "speed-up": speed[True] / speed[False]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="translation checkpoint (default: random Multi30k-size model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--short", type=int, default=16, help="source and output tokens of short sentences")
    p.add_argument("--long", type=int, default=96, help="source and output tokens of long sentences")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_seq2seq(args.model)[0] if args.model else random_model()
    if args.long > model.config.max_len:
        p.error(f"--long {args.long} exceeds the model's max_len {model.config.max_len}")
    with torch.inference_mode():
        rows = run(model, batch=args.batch, lengths={"short": args.short, "long": args.long}, beam=args.beam,
                   repeats=args.repeats)
    print(f"decoding, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{model.num_params() / 1e6:.1f}M parameters; generated tokens/s (median of {args.repeats})")
    print("| sentences | method | cache | no cache | speed-up |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sentences']} | {r['method']} | {r['cache']:.0f} | {r['no cache']:.0f} "
              f"| {r['speed-up']:.1f}x |")


if __name__ == "__main__":
    main()
