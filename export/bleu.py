"""sacreBLEU of a translator on a parallel set, over a grid of decoding settings, and the
choice of the shipped ones (torch-free for exported folders).

    python -m export.bleu --model models/multi30k_translator \\
        --src ../shared/data/multi30k/val.de.gz --ref ../shared/data/multi30k/val.en.gz \\
        --beam 1 4 5 --length-penalty 0.6 1.0 1.4 --choose

BLEU is sacreBLEU's corpus score on detokenized output against the raw reference lines
(its signature is printed). ``--choose`` writes the best setting into the exported
folder's ``seq2seq.json`` (``"decoding"``), which ``vit-translate`` and the demo then use
by default: choose on a validation set, never on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit.text_codec import read_lines

from .translate import load_translator
from .translator import Translator


def score(translator: Translator, sources: Sequence[str], references: Sequence[str], *, beam: int,
          length_penalty: float, batch_size: int = 64) -> dict[str, Any]:
    """BLEU, its signature, time and generated tokens per second of one decoding setting."""
    import sacrebleu

    start = time.perf_counter()
    results = translator.translate(sources, beam=beam, length_penalty=length_penalty, batch_size=batch_size)
    seconds = time.perf_counter() - start
    bleu = sacrebleu.BLEU()
    corpus = bleu.corpus_score([t.text for t in results], [list(references)])
    tokens = sum(len(t.out_tokens) for t in results)
    return {"beam": beam, "length_penalty": length_penalty, "bleu": corpus.score,
            "signature": str(bleu.get_signature()), "sentences": len(results), "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else float("inf")}


def grid(translator: Translator, sources: Sequence[str], references: Sequence[str], beams: Sequence[int],
         length_penalties: Sequence[float], batch_size: int = 64) -> list[dict[str, Any]]:
    """:func:`score` for greedy decoding (once) and every beam width x length penalty."""
    rows = []
    for beam in beams:
        for penalty in (length_penalties if beam > 1 else length_penalties[:1]):  # greedy ignores it
            rows.append(score(translator, sources, references, beam=beam, length_penalty=penalty,
                              batch_size=batch_size))
    return rows


def write_decoding(directory: Path, choice: dict[str, Any]) -> None:
    """Store ``choice`` (beam, length penalty, the BLEU that chose it) in ``seq2seq.json``."""
    path = directory / "seq2seq.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["decoding"] = {k: choice[k] for k in ("beam", "length_penalty")}
    meta["decoding_chosen_on"] = {k: choice[k] for k in ("bleu", "signature", "sentences")}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".seq2seq.json.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bleu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="translation checkpoint or exported folder")
    p.add_argument("--src", required=True, help="source sentences, one a line (.gz allowed)")
    p.add_argument("--ref", required=True, help="reference translations, aligned with --src")
    p.add_argument("--beam", type=int, nargs="+", default=[1], help="beam widths (1: greedy)")
    p.add_argument("--length-penalty", type=float, nargs="+", default=[0.6], help="GNMT alphas for beams")
    p.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--choose", action="store_true",
                   help="write the best setting into the exported folder's seq2seq.json")
    p.add_argument("-o", "--output", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        sources, references = read_lines(args.src, args.limit), read_lines(args.ref, args.limit)
        if len(sources) != len(references):
            raise ValueError(f"{args.src} has {len(sources)} lines, {args.ref} has {len(references)}")
        if args.choose and not (args.model / "seq2seq.json").is_file():
            raise ValueError(f"--choose writes into an exported folder; {args.model} is not one")
        rows = grid(load_translator(args.model), sources, references, args.beam, args.length_penalty,
                    args.batch_size)
    except (OSError, ValueError) as exc:
        print(f"export.bleu: error: {exc}", file=sys.stderr)
        return 2
    print(f"{rows[0]['sentences']} sentences; {rows[0]['signature']}")
    print("| beam | length penalty | BLEU | tokens/s |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rows:
        penalty = f"{r['length_penalty']:.1f}" if r["beam"] > 1 else "-"
        print(f"| {r['beam']} | {penalty} | {r['bleu']:.2f} | {r['tokens_per_second']:.0f} |")
    best = max(rows, key=lambda r: r["bleu"])
    if args.choose:
        write_decoding(args.model, best)
        print(f"chose beam {best['beam']}, length penalty {best['length_penalty']} "
              f"(BLEU {best['bleu']:.2f}) for {args.model}")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
