"""``vit-translate``: translate sentences with a trained translation model.

    vit-translate --model runs/multi30k/checkpoints/last.ckpt "Ein Hund rennt über die Wiese."
    vit-translate --model model.safetensors --beam 4 --input sentences.de > sentences.en
    echo "Zwei Männer spielen Fußball." | vit-translate --model exported_onnx_dir --attention

``--model`` is a ``vit-train`` checkpoint or project ``.safetensors`` (decoded by PyTorch),
or a folder written by ``vit-export`` for a translation checkpoint (decoded by onnxruntime,
without torch; default: the shipped ``models/multi30k_translator``); both decode greedily
or with beam search (:mod:`export.translator`), by default with the beam width and length
penalty the model carries.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vit.command import parser
from vit.paths import DEFAULT_TRANSLATOR

from .backends import add_runtime_arguments
from .onnx_classifier import resolve_providers
from .translator import Translation, Translator


def load_translator(path: str | Path, *, providers: Sequence[str] | None = None) -> Translator:
    """A folder with ``encoder.onnx``: onnxruntime (no torch); a ``.ckpt``/``.safetensors``
    file or a folder with ``model.safetensors``: PyTorch."""
    path = Path(path)
    if path.is_dir():
        if (path / "encoder.onnx").is_file():
            from .onnx_translator import OnnxTranslator

            return OnnxTranslator(path, providers=providers)
        if (path / "model.safetensors").is_file():
            path = path / "model.safetensors"
        else:
            raise FileNotFoundError(f"{path}: holds neither encoder.onnx nor model.safetensors")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file or folder")
    from .torch_translator import TorchTranslator

    return TorchTranslator.load(path)


def format_attention(t: Translation, layer: int) -> str:
    """The chosen layer's head-averaged cross-attention as a text table: one row per source
    token, one column per generated token, weights in percent."""
    if t.attention is None or not t.out_tokens:
        return "(no attention)"
    weights = t.attention[layer].T  # (S, T)
    cols = [tok.replace("▁", "") or "▁" for tok in t.out_tokens]
    rows = [tok.replace("▁", "") or "▁" for tok in t.src_tokens]
    width = max(4, *(len(c) for c in cols))
    head = max(len(r) for r in rows)
    lines = [" " * head + " " + " ".join(c.rjust(width) for c in cols)]
    for name, row in zip(rows, weights, strict=True):
        lines.append(name.ljust(head) + " " + " ".join(f"{100 * w:{width}.0f}" for w in row))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser("vit-translate", __doc__)
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: --input or stdin)")
    p.add_argument("--model", type=Path, default=None,
                   help=f"checkpoint (.ckpt/.safetensors) or exported ONNX folder "
                        f"(default: {DEFAULT_TRANSLATOR})")
    p.add_argument("--input", help="a file with one sentence a line")
    p.add_argument("--beam", type=int, default=None, help="beam width, 1: greedy (default: the model's)")
    p.add_argument("--length-penalty", type=float, default=None,
                   help="GNMT length penalty alpha for beam search (default: the model's)")
    add_runtime_arguments(p, backends=False)
    p.add_argument("--max-len", type=int, default=None, help="most tokens to generate (default 2 S + 10)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded together")
    p.add_argument("--attention", "--alignment", action="store_true", dest="attention",
                   help="also print the cross-attention (source x generated tokens)")
    p.add_argument("--attention-layer", "--alignment-layer", type=int, default=-1, dest="attention_layer",
                   help="decoder layer of the printed attention (default last)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.sentences:
            texts = list(args.sentences)
        elif args.input:
            texts = Path(args.input).read_text(encoding="utf-8").splitlines()
        else:
            texts = sys.stdin.read().splitlines()
        model = args.model
        if model is None:
            model = DEFAULT_TRANSLATOR
            if not model.exists():
                raise FileNotFoundError(
                    f"no translation model at {model}; train one (vit-train fit --config "
                    f"training/configs/multi30k.yaml), export it (vit-export CHECKPOINT -o {model}) "
                    "or pass --model")
        translator = load_translator(model, providers=resolve_providers(args.provider))
        if args.attention and not -translator.num_layers <= args.attention_layer < translator.num_layers:
            raise ValueError(f"--attention-layer {args.attention_layer} is out of range for "
                             f"{translator.num_layers} decoder layers")
        results = translator.translate(texts, beam=args.beam, length_penalty=args.length_penalty,
                                       max_len=args.max_len, batch_size=args.batch_size,
                                       return_attention=args.attention)
    except (OSError, ValueError) as exc:
        print(f"vit-translate: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for t in results:
        print(t.text)
        if args.attention:
            print(format_attention(t, args.attention_layer))
            print()


if __name__ == "__main__":
    main()
