"""Translation model -> ONNX encoder and decoder, and a torch-free greedy decoder on onnxruntime.

    python -m export.seq2seq_onnx runs/multi30k/checkpoints/last.ckpt -o runs/multi30k/onnx \\
        --verify ../shared/data/multi30k/val.de.gz
    vit-translate --model runs/multi30k/onnx "Ein Mann fährt Fahrrad."

The folder holds ``encoder.onnx``, ``decoder.onnx``, ``seq2seq.json`` (config and export
facts) and the tokenizer (``tokenizer.json``, or ``src_``/``tgt_tokenizer.json``).

* ``encoder.onnx``: ``src_ids`` (B, S) int64 -> ``cross_key_i``, ``cross_value_i`` (B, H, S, Dh)
  for every decoder layer i: the encoder output projected once for cross-attention.
* ``decoder.onnx``: one step. Inputs ``tokens`` (B, 1) int64, ``src_keep`` (B, S) bool
  (source token is not padding), the cross K/V above, and ``past_key_i``/``past_value_i``
  (B, H, P, Dh), P = tokens decoded so far (0 at the first step). Outputs ``logits`` (B, V),
  ``present_key_i``/``present_value_i`` (B, H, P + 1, Dh) and ``cross_weights`` (L, B, S),
  the step's cross-attention averaged over heads.

The export is traced with ``torch.onnx.export(dynamo=True)`` (opset 18, as the ViT export),
then verified: greedy decoding through onnxruntime must give the same tokens as PyTorch.
Only this module's export half imports torch; :class:`OnnxTranslator` needs numpy,
onnxruntime and tokenizers only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .translate import TextCodec, Translation

log = logging.getLogger(__name__)

ENCODER, DECODER, CONFIG = "encoder.onnx", "decoder.onnx", "seq2seq.json"
OPSET = 18


# ---------------------------------------------------------------------------- serving (no torch)
class OnnxTranslator:
    """Greedy translation with onnxruntime and numpy (same rules as :mod:`vit.decoding`)."""

    supports_beam = False

    def __init__(self, directory: str | Path, *, providers: Sequence[str] | None = None) -> None:
        directory = Path(directory)
        meta_path = directory / CONFIG
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: no {CONFIG}; not an exported translation model")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.config = cfg = self.meta["config"]
        if (directory / "tokenizer.json").is_file():
            src = tgt = Tokenizer.from_file(str(directory / "tokenizer.json"))
        else:
            src = Tokenizer.from_file(str(directory / "src_tokenizer.json"))
            tgt = Tokenizer.from_file(str(directory / "tgt_tokenizer.json"))
        self.codec = TextCodec(src, tgt, max_len=cfg["max_len"], pad_id=cfg["pad_id"], eos_id=cfg["eos_id"])
        self.num_layers = cfg["dec_depth"]
        self.num_heads, self.head_dim = cfg["num_heads"], cfg["dim"] // cfg["num_heads"]
        prov = list(providers) if providers else ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(directory / ENCODER), providers=prov)
        self.decoder = ort.InferenceSession(str(directory / DECODER), providers=prov)

    def greedy(self, src_ids: np.ndarray, *, max_len: int | None = None,
               need_weights: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """src_ids (B, S) int64 -> generated ids (B, T) (no BOS, pad after EOS) and, when
        asked for, cross-attention (B, L, T, S) averaged over heads."""
        cfg, n = self.config, self.num_layers
        b, s = src_ids.shape
        steps = min(cfg["max_len"], 2 * s + 10) if max_len is None else max_len
        if not 1 <= steps <= cfg["max_len"]:
            raise ValueError(f"max_len must be in [1, {cfg['max_len']}] (the model's max_len), got {steps}")
        cross = self.encoder.run(None, {"src_ids": src_ids})
        feeds: dict[str, np.ndarray] = {"src_keep": src_ids != cfg["pad_id"]}
        for i in range(n):
            feeds[f"cross_key_{i}"], feeds[f"cross_value_{i}"] = cross[2 * i], cross[2 * i + 1]
            empty = np.zeros((b, self.num_heads, 0, self.head_dim), dtype=np.float32)  # (B, H, 0, Dh)
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = empty, empty
        token = np.full((b, 1), cfg["bos_id"], dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        out, weights = [], []
        for t in range(steps):
            logits, *rest = self.decoder.run(None, {"tokens": token, **feeds})
            presents, step_weights = rest[:-1], rest[-1]  # 2L x (B, H, t + 1, Dh), (L, B, S)
            logits[:, [cfg["pad_id"], cfg["bos_id"]]] = -np.inf
            if t == steps - 1:  # the last allowed step ends every sentence
                logits[:, np.arange(logits.shape[1]) != cfg["eos_id"]] = -np.inf
            nxt = np.where(done, cfg["pad_id"], logits.argmax(axis=-1))  # (B,)
            out.append(nxt)
            if need_weights:
                weights.append(step_weights)
            done |= nxt == cfg["eos_id"]
            if done.all():
                break
            token = nxt[:, None].astype(np.int64)
            for i in range(n):
                feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = presents[2 * i], presents[2 * i + 1]
        tokens = np.stack(out, axis=1)  # (B, T)
        align = np.stack(weights, axis=2).transpose(1, 0, 2, 3) if need_weights else None  # (B, L, T, S)
        return tokens, align

    def translate(self, texts: Sequence[str], *, beam: int = 1, length_penalty: float = 0.6,
                  max_len: int | None = None, batch_size: int = 32,
                  alignment: bool = False) -> list[Translation]:
        if beam != 1:
            raise ValueError("the ONNX back end decodes greedily (beam 1); "
                             "use a PyTorch checkpoint for beam search")
        encoded = self.codec.encode(texts)
        results: list[Translation | None] = [None] * len(texts)
        for chunk in self.codec.batches(encoded, batch_size):
            src = self.codec.pad([encoded[i][0] for i in chunk])
            tokens, weights = self.greedy(src, max_len=max_len, need_weights=alignment)
            for row, i in enumerate(chunk):
                ids, cut = encoded[i]
                results[i] = self.codec.finish(texts[i], ids, tokens[row].tolist(), cut,
                                               None if weights is None else weights[row])
        return [r if r is not None else self.codec.empty(texts[i], alignment, self.num_layers)
                for i, r in enumerate(results)]


# ---------------------------------------------------------------------------- export (torch)
def _graphs(model: Any) -> tuple[Any, Any]:
    """Export-only wrappers of the model's encoder and one decoder step."""
    import torch
    from torch import nn

    from vit.attention import KVCache
    from vit.seq2seq import Encoded, LayerCache

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cross = self.model.project_memory(self.model._encode(src_ids))
            return tuple(t for kv in cross for t in kv)  # 2L x (B, H, S, Dh)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor, src_keep: torch.Tensor, cross: list[torch.Tensor],
                    past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            cache = tuple(
                LayerCache(KVCache(past[2 * i], past[2 * i + 1]), KVCache(cross[2 * i], cross[2 * i + 1]))
                for i in range(len(cross) // 2)
            )
            out = self.model._decode(tokens, Encoded(None, src_keep), cache, past[0].shape[2],
                                     use_cache=True, need_weights=True, tgt_keep=None)
            presents = tuple(t for c in out.cache for t in c.self_attn)  # 2L x (B, H, P + 1, Dh)
            weights = torch.stack([w[:, :, 0].mean(dim=1) for w in out.cross_weights])  # (L, B, S)
            return (out.logits[:, -1], *presents, weights)

    return Encoder().eval(), Decoder().eval()


def export_onnx(model: Any, directory: str | Path, *, opset: int = OPSET) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into ``directory``."""
    import torch

    cfg = model.config
    n, h, dh = cfg.dec_depth, cfg.num_heads, cfg.dim // cfg.num_heads
    directory = Path(directory)
    encoder, decoder = _graphs(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    src_len = torch.export.Dim("src_len", min=1, max=cfg.max_len)
    past_len = torch.export.Dim("past_len", min=0, max=cfg.max_len - 1)
    b, s, p = 2, 5, 3  # example sizes; 0 and 1 would be specialised
    src = torch.randint(3, cfg.src_vocab_size, (b, s))
    cross_names = [f"cross_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    past_names = [f"past_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    with torch.no_grad():
        torch.onnx.export(
            encoder, (src,), str(directory / ENCODER), dynamo=True, opset_version=opset,
            input_names=["src_ids"], output_names=cross_names,
            dynamic_shapes=({0: batch, 1: src_len},), external_data=False, verbose=False,
        )
        cross = list(encoder(src))
        past = [torch.randn(b, h, p, dh) for _ in range(2 * n)]
        args = (torch.full((b, 1), cfg.bos_id), torch.ones(b, s, dtype=torch.bool), cross, past)
        torch.onnx.export(
            decoder, args, str(directory / DECODER), dynamo=True, opset_version=opset,
            input_names=["tokens", "src_keep", *cross_names, *past_names],
            output_names=["logits", *(f"present_{k}_{i}" for i in range(n) for k in ("key", "value")),
                          "cross_weights"],
            dynamic_shapes=({0: batch}, {0: batch, 1: src_len}, [{0: batch, 2: src_len}] * (2 * n),
                            [{0: batch, 2: past_len}] * (2 * n)),
            external_data=False, verbose=False,
        )


def verify(model: Any, translator: OnnxTranslator, sentences: Sequence[str],
           batch_size: int = 64) -> dict[str, Any]:
    """Greedy tokens through onnxruntime vs PyTorch on ``sentences``."""
    import torch

    from vit.decoding import greedy_decode

    encoded = translator.codec.encode(sentences)
    same = total = 0
    worst = 0.0
    for chunk in translator.codec.batches(encoded, batch_size):
        src = translator.codec.pad([encoded[i][0] for i in chunk])
        ort_tokens, ort_w = translator.greedy(src, need_weights=True)
        with torch.inference_mode():
            ref = greedy_decode(model, torch.from_numpy(src), need_weights=True)
        ref_tokens = ref.tokens.numpy()
        for row in range(len(chunk)):
            total += 1
            equal = ref_tokens.shape[1] == ort_tokens.shape[1] and (ref_tokens[row] == ort_tokens[row]).all()
            same += bool(equal)
        if ref_tokens.shape == ort_tokens.shape:
            ref_w = torch.stack([w.mean(dim=1) for w in ref.cross_weights], dim=1).numpy()  # (B, L, T, S)
            worst = max(worst, float(np.abs(ref_w - ort_w).max()))
    return {"sentences": total, "identical": same, "max_cross_weight_diff": worst}


def export_seq2seq(checkpoint: str | Path, out_dir: str | Path, *, sentences: Sequence[str] = (),
                   min_identical: float = 1.0, opset: int = OPSET) -> dict[str, Any]:
    """Export, check and verify; ``out_dir`` is built in a temporary folder beside it and
    renamed into place only when at least ``min_identical`` of the verification sentences
    (``sentences``, else random ones) decode to identical tokens through onnxruntime."""
    import onnx

    from vit.seq2seq import load_seq2seq

    model, record = load_seq2seq(checkpoint)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        export_onnx(model, tmp, opset=opset)
        for name in (ENCODER, DECODER):
            onnx.checker.check_model(str(tmp / name))
        if record.get("tgt_tokenizer"):
            tokenizers = {"src_tokenizer.json": record["src_tokenizer"],
                          "tgt_tokenizer.json": record["tgt_tokenizer"]}
        else:
            tokenizers = {"tokenizer.json": record["src_tokenizer"]}
        for name, text in tokenizers.items():
            (tmp / name).write_text(text, encoding="utf-8")
        meta = {"config": model.config.to_dict(), "opset": opset, "checkpoint": str(checkpoint),
                "source": record.get("source"), "val_bleu": record.get("val_bleu")}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        translator = OnnxTranslator(tmp)
        sentences = list(sentences) or _sample_sentences(translator.codec)
        report = verify(model, translator, sentences)
        log.info("ONNX vs PyTorch greedy decoding: %s", report)
        if report["identical"] < min_identical * report["sentences"]:
            raise ValueError(
                f"ONNX greedy decoding differs from PyTorch on {report['sentences'] - report['identical']} "
                f"of {report['sentences']} sentences; {out_dir} left as it was"
            )
        (tmp / CONFIG).write_text(json.dumps({**meta, "verification": report}, indent=2), encoding="utf-8")
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sample_sentences(codec: TextCodec, count: int = 16, seed: int = 0) -> list[str]:
    """Random source-vocabulary sentences, when no verification text is given."""
    rng = np.random.default_rng(seed)
    vocab = [codec.src.id_to_token(i) for i in range(codec.src.get_vocab_size())]
    words = [w for w in vocab if w and not w.startswith("<")]
    return ["".join(rng.choice(words, size=int(rng.integers(3, 20)))).replace("▁", " ").strip()
            for _ in range(count)]


def read_sentences(path: str | Path, limit: int | None) -> list[str]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return lines[:limit] if limit else lines


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export.seq2seq_onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="translation checkpoint (.ckpt or .safetensors)")
    p.add_argument("-o", "--output", required=True, help="folder to write")
    p.add_argument("--verify", help="sentences (one a line, .gz allowed) to check ONNX = PyTorch on")
    p.add_argument("--max-verify", type=int, default=None, help="use only the first N sentences")
    p.add_argument("--min-identical", type=float, default=1.0,
                   help="share of sentences that must decode identically (default all)")
    p.add_argument("--opset", type=int, default=OPSET)
    args = p.parse_args(argv)
    try:
        sentences = read_sentences(args.verify, args.max_verify) if args.verify else ()
        report = export_seq2seq(args.checkpoint, args.output, sentences=sentences,
                                min_identical=args.min_identical, opset=args.opset)
    except (OSError, ValueError) as exc:
        print(f"export.seq2seq_onnx: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
