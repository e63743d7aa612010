"""``vit-export CHECKPOINT -o OUTPUT``: export a checkpoint to ONNX, verified against PyTorch.

An image classifier becomes one ``.onnx`` file (and variants, :mod:`export.vit_export`);
a translator becomes a folder with its encoder, cached decoder and tokenizer
(:mod:`export.seq2seq_onnx`). Nothing appears at ``OUTPUT`` unless verification passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vit.checkpoint import SEQ2SEQ_KEY, checkpoint_kind
from vit.command import parser
from vit.text_codec import read_lines

from .metadata import OPSET

SUPPORTED_OPSETS = tuple(range(18, 22))  # what torch.onnx (dynamo) writes and onnxruntime >= 1.18 runs


def _parser() -> argparse.ArgumentParser:
    p = parser("vit-export", __doc__)
    p.add_argument("checkpoint", type=Path, nargs="+",
                   help="vit-train .ckpt, project .safetensors or timm checkpoint (classifier or "
                        "translator); several checkpoints of one run are averaged (e.g. its last epochs)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="target .onnx file (classifier) or folder (translator)")
    image = p.add_argument_group("image classifiers")
    image.add_argument("--attention", action="store_true",
                       help="add an 'attention' output (B, L, H, N, N): every layer's weights")
    image.add_argument("--optimize", action="store_true",
                       help="write onnxruntime's fused graph (Attention, SkipLayerNorm, BiasGelu)")
    image.add_argument("--quantize", choices=["int8"], help="also write <output>.int8.onnx (dynamic int8)")
    image.add_argument("--fp16", action="store_true", help="also write <output>.fp16.onnx (for GPU)")
    image.add_argument("--verify-images", type=Path,
                       help="image folder (ImageFolder for accuracy) to verify on; also runs the parity "
                            "gate of every backend/precision here (python -m export.gate)")
    image.add_argument("--no-gate", dest="gate", action="store_false",
                       help="verify against PyTorch only, without the parity gate")
    text = p.add_argument_group("translators")
    text.add_argument("--verify-text", type=Path,
                      help="source sentences (one a line, .gz allowed) to check ONNX = PyTorch on")
    text.add_argument("--min-identical", type=float, default=1.0,
                      help="share of sentences that must decode identically (default all)")
    p.add_argument("--num-verify", type=int, default=None,
                   help="images (default 256) or sentences (default all) to verify on")
    p.add_argument("--opset", type=int, default=OPSET, choices=SUPPORTED_OPSETS, metavar="OPSET",
                   help=f"ONNX opset of the written graph ({SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]})")
    return p


def _export_vit(args: argparse.Namespace) -> int:
    from .gate import format_gate
    from .vit_export import ExportOptions, export_checkpoint

    options = ExportOptions(return_attention=args.attention, optimize=args.optimize, quantize=args.quantize,
                            fp16=args.fp16, verify_images=args.verify_images,
                            num_verify=args.num_verify or 256, opset=args.opset, gate=args.gate)
    result = export_checkpoint(args.checkpoint, args.output, options)
    for report in result.reports:
        print(report.line())
    if result.gate is not None:
        print(format_gate(result.gate, _auto_choice(result.gate)))
    if result.fused_ops:
        print("fused operators: " + ", ".join(f"{k} {v}" for k, v in sorted(result.fused_ops.items())))
    for note in result.notes:
        print(note)
    if not result.passed:
        print(f"vit-export: verification failed; {args.output} was not written", file=sys.stderr)
        return 1
    for variant, path in result.files.items():
        print(f"wrote {path} ({variant}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _auto_choice(record: dict) -> str:
    from .backends import availability, choose, verdicts

    available, missing = availability()
    pick = choose("auto", "auto", available=available, missing=missing, passed=verdicts(record))
    return f"{pick.backend} {pick.precision}"


def _export_seq2seq(args: argparse.Namespace) -> int:
    from .seq2seq_onnx import export_seq2seq

    sentences = read_lines(args.verify_text, args.num_verify) if args.verify_text else ()
    report = export_seq2seq(args.checkpoint, args.output, sentences=sentences,
                            min_identical=args.min_identical, opset=args.opset, label=args.label)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    averaged = None
    args.label = " + ".join(str(p) for p in args.checkpoint) if len(args.checkpoint) > 1 else None
    try:
        if len(args.checkpoint) > 1:
            averaged = _average(args.checkpoint, args.output)
        args.checkpoint = averaged or args.checkpoint[0]
        if checkpoint_kind(args.checkpoint) == SEQ2SEQ_KEY:
            return _export_seq2seq(args)
        return _export_vit(args)
    except (OSError, ValueError) as exc:
        print(f"vit-export: {exc}", file=sys.stderr)
        return 2
    finally:
        if averaged is not None:
            averaged.unlink(missing_ok=True)


def _average(checkpoints: list[Path], output: Path) -> Path:
    """The mean of ``checkpoints`` as a temporary project ``.safetensors`` beside ``output``."""
    import tempfile

    from vit.checkpoint import average_checkpoints, save_seq2seq, save_vit

    kind, model, record = average_checkpoints(checkpoints)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".mean.safetensors")
    os.close(fd)
    (save_seq2seq if kind == SEQ2SEQ_KEY else save_vit)(model, record, name)
    print(f"averaged {len(checkpoints)} checkpoints")
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
