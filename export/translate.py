"""``vit-translate``: translate sentences with a trained translation model.

    vit-translate --model runs/multi30k/checkpoints/last.ckpt "Ein Hund rennt über die Wiese."
    vit-translate --model model.safetensors --beam 4 --input sentences.de > sentences.en
    echo "Zwei Männer spielen Fußball." | vit-translate --model exported_onnx_dir --alignment

``--model`` is a ``vit-train`` checkpoint or project ``.safetensors`` (decoded by PyTorch,
greedy or beam search, on the KV cache), or a folder written by
``python -m export.seq2seq_onnx`` (decoded greedily by onnxruntime, without torch).

This module imports no torch at load time: :class:`TextCodec` (tokenization, batching,
truncation) and :class:`Translation` serve both back ends; :class:`TorchTranslator` imports
torch when built.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

EOS, UNK = "<eos>", "<unk>"


@dataclass
class Translation:
    """One translated sentence.

    ``alignment`` (when asked for): cross-attention (L, T, S) averaged over heads, one
    (generated tokens x source tokens) matrix per decoder layer, rows summing to 1;
    ``src_tokens`` (S, ending in ``<eos>``) and ``out_tokens`` (T, ending in ``<eos>``
    unless cut at the length limit) label its axes.
    """

    source: str
    text: str
    src_tokens: list[str]
    out_tokens: list[str]
    alignment: np.ndarray | None = None
    truncated: bool = False


class Translator(Protocol):
    """What the CLI and the demo need from a back end."""

    num_layers: int  # decoder layers (of the alignment)
    supports_beam: bool

    def translate(self, texts: Sequence[str], *, beam: int = 1, length_penalty: float = 0.6,
                  max_len: int | None = None, batch_size: int = 32,
                  alignment: bool = False) -> list[Translation]: ...


class TextCodec:
    """Text <-> token ids for a translation model, without torch.

    Source sentences become ids ending in ``<eos>`` (the tokenizer's post-processor adds
    it); those longer than the model's ``max_len`` keep their first ``max_len - 1`` tokens
    and ``<eos>``, with a warning.
    """

    def __init__(self, src: Tokenizer, tgt: Tokenizer, *, max_len: int, pad_id: int, eos_id: int) -> None:
        self.src, self.tgt = src, tgt
        self.max_len, self.pad_id, self.eos_id = max_len, pad_id, eos_id
        for tok in (src, tgt):
            tok.no_truncation()
            tok.no_padding()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TextCodec:
        """From a ``seq2seq`` record (config + tokenizer JSON strings)."""
        src = Tokenizer.from_str(record["src_tokenizer"])
        tgt = Tokenizer.from_str(record["tgt_tokenizer"]) if record.get("tgt_tokenizer") else src
        cfg = record["config"]
        return cls(src, tgt, max_len=cfg["max_len"], pad_id=cfg["pad_id"], eos_id=cfg["eos_id"])

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """(ids ending in EOS, truncated?) per text; whitespace-only texts give ``[]``."""
        out = []
        for i, enc in enumerate(self.src.encode_batch([t.strip() for t in texts])):
            ids = list(enc.ids)
            if not texts[i].strip():
                out.append(([], False))
                continue
            if ids[-1:] != [self.eos_id]:  # a tokenizer without the EOS post-processor
                ids.append(self.eos_id)
            cut = len(ids) > self.max_len
            if cut:
                log.warning("sentence %d has %d tokens; truncated to the model's max_len %d",
                            i + 1, len(ids), self.max_len)
                ids = ids[: self.max_len - 1] + [self.eos_id]
            out.append((ids, cut))
        return out

    def pad(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Right-pad to (B, S) int64."""
        batch = np.full((len(seqs), max(len(s) for s in seqs)), self.pad_id, dtype=np.int64)
        for i, s in enumerate(seqs):
            batch[i, : len(s)] = s
        return batch

    def finish(self, source: str, src_ids: list[int], out_ids: Sequence[int], truncated: bool,
               weights: np.ndarray | None) -> Translation:
        """A :class:`Translation` from generated ids (cut after the first EOS) and, when
        given, head-averaged cross-attention (L, T', S') trimmed to the real tokens."""
        out_ids = list(out_ids)
        if self.eos_id in out_ids:
            out_ids = out_ids[: out_ids.index(self.eos_id) + 1]
        text_ids = [t for t in out_ids if t != self.eos_id]
        align = None
        if weights is not None:
            align = np.ascontiguousarray(weights[:, : len(out_ids), : len(src_ids)], dtype=np.float32)
        return Translation(
            source=source,
            text=self.tgt.decode(text_ids, skip_special_tokens=True),
            src_tokens=[self.src.id_to_token(t) or UNK for t in src_ids],
            out_tokens=[self.tgt.id_to_token(t) or UNK for t in out_ids],
            alignment=align,
            truncated=truncated,
        )

    def batches(self, encoded: list[tuple[list[int], bool]], batch_size: int) -> Iterator[list[int]]:
        """Indices of the non-empty sentences, longest first, in chunks of ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted((i for i, (ids, _) in enumerate(encoded) if ids), key=lambda i: -len(encoded[i][0]))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    def empty(self, source: str, alignment: bool, num_layers: int) -> Translation:
        weights = np.zeros((num_layers, 0, 0), dtype=np.float32) if alignment else None
        return Translation(source, "", [], [], weights, False)


class TorchTranslator:
    """PyTorch back end: greedy decoding or beam search on the KV cache."""

    supports_beam = True

    def __init__(self, model: Any, record: dict[str, Any]) -> None:
        self.model = model.eval()
        self.record = record
        self.codec = TextCodec.from_record({**record, "config": model.config.to_dict()})
        self.num_layers = model.config.dec_depth

    @classmethod
    def load(cls, path: str | Path) -> TorchTranslator:
        from vit.seq2seq import load_seq2seq

        model, record = load_seq2seq(path)
        return cls(model, record)

    def translate(self, texts: Sequence[str], *, beam: int = 1, length_penalty: float = 0.6,
                  max_len: int | None = None, batch_size: int = 32,
                  alignment: bool = False) -> list[Translation]:
        import torch

        from vit.decoding import beam_search, greedy_decode

        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        encoded = self.codec.encode(texts)
        results: list[Translation | None] = [None] * len(texts)
        for chunk in self.codec.batches(encoded, batch_size):
            src = torch.from_numpy(self.codec.pad([encoded[i][0] for i in chunk]))  # (B, S)
            with torch.inference_mode():
                if beam == 1:
                    gen = greedy_decode(self.model, src, max_len=max_len, need_weights=alignment)
                else:
                    gen = beam_search(self.model, src, beam_size=beam, length_penalty=length_penalty,
                                      max_len=max_len, need_weights=alignment)
            weights = None
            if alignment:
                # head-averaged, layers stacked: (B, L, T, S)
                weights = torch.stack([w.float().mean(dim=1) for w in gen.cross_weights], dim=1).numpy()
            for row, i in enumerate(chunk):
                ids, cut = encoded[i]
                results[i] = self.codec.finish(texts[i], ids, gen.tokens[row].tolist(), cut,
                                               None if weights is None else weights[row])
        return [r if r is not None else self.codec.empty(texts[i], alignment, self.num_layers)
                for i, r in enumerate(results)]


def load_translator(path: str | Path, *, providers: Sequence[str] | None = None) -> Translator:
    """A folder with ``encoder.onnx``: onnxruntime (no torch); a ``.ckpt``/``.safetensors``
    file or a folder with ``model.safetensors``: PyTorch."""
    path = Path(path)
    if path.is_dir():
        if (path / "encoder.onnx").is_file():
            from .seq2seq_onnx import OnnxTranslator

            return OnnxTranslator(path, providers=providers)
        if (path / "model.safetensors").is_file():
            return TorchTranslator.load(path / "model.safetensors")
        raise FileNotFoundError(f"{path}: holds neither encoder.onnx nor model.safetensors")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file or folder")
    return TorchTranslator.load(path)


def format_alignment(t: Translation, layer: int) -> str:
    """The chosen layer's head-averaged cross-attention as a text table: one row per source
    token, one column per generated token, weights in percent."""
    if t.alignment is None or not t.out_tokens:
        return "(no alignment)"
    weights = t.alignment[layer].T  # (S, T)
    cols = [tok.replace("▁", "") or "▁" for tok in t.out_tokens]
    rows = [tok.replace("▁", "") or "▁" for tok in t.src_tokens]
    width = max(4, *(len(c) for c in cols))
    head = max(len(r) for r in rows)
    lines = [" " * head + " " + " ".join(c.rjust(width) for c in cols)]
    for name, row in zip(rows, weights, strict=True):
        lines.append(name.ljust(head) + " " + " ".join(f"{100 * w:{width}.0f}" for w in row))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vit-translate", description=__doc__.split("\n\n")[0])
    p.add_argument("sentences", nargs="*", help="sentences to translate (default: --input or stdin)")
    p.add_argument("--model", required=True,
                   help="checkpoint (.ckpt/.safetensors) or exported ONNX folder")
    p.add_argument("--input", help="a file with one sentence a line")
    p.add_argument("--beam", type=int, default=1, help="beam width (1: greedy)")
    p.add_argument("--length-penalty", type=float, default=0.6,
                   help="GNMT length penalty alpha for beam search")
    p.add_argument("--max-len", type=int, default=None, help="most tokens to generate (default 2 S + 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--alignment", action="store_true", help="print the cross-attention alignment")
    p.add_argument("--alignment-layer", type=int, default=-1,
                   help="decoder layer of the alignment (default last)")
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
        translator = load_translator(args.model)
        if args.alignment and not -translator.num_layers <= args.alignment_layer < translator.num_layers:
            raise ValueError(f"--alignment-layer {args.alignment_layer} is out of range for "
                             f"{translator.num_layers} decoder layers")
        results = translator.translate(texts, beam=args.beam, length_penalty=args.length_penalty,
                                       max_len=args.max_len, batch_size=args.batch_size,
                                       alignment=args.alignment)
    except (OSError, ValueError) as exc:
        print(f"vit-translate: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for t in results:
        print(t.text)
        if args.alignment:
            print(format_alignment(t, args.alignment_layer))
            print()


if __name__ == "__main__":
    main()
