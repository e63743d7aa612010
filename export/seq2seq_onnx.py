"""Translation model -> ONNX encoder and cached decoder, verified against PyTorch.

    vit-export runs/multi30k/checkpoints/last.ckpt -o models/multi30k_translator \\
        --verify-text ../shared/data/multi30k/val.de.gz
    vit-translate --model models/multi30k_translator "Ein Mann fährt Fahrrad."

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
then verified: greedy decoding through onnxruntime (:mod:`export.onnx_translator`) must
give the same tokens as PyTorch. This module imports torch; serving does not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vit.attention import KVCache
from vit.checkpoint import load_seq2seq
from vit.command import dir_mode, file_mode
from vit.decoding import greedy_decode
from vit.seq2seq import Encoded, LayerCache, Seq2Seq
from vit.text_codec import TextCodec

from .metadata import OPSET, SEQ2SEQ_FILES
from .onnx_translator import OnnxTranslator

log = logging.getLogger(__name__)

ENCODER, DECODER, CONFIG = SEQ2SEQ_FILES


# ---------------------------------------------------------------------------- export (torch)
def _graphs(model: Seq2Seq) -> tuple[nn.Module, nn.Module]:
    """Export-only wrappers of the model's encoder and one decoder step."""

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
                                     use_cache=True, return_attention=True, tgt_keep=None)
            presents = tuple(t for c in out.cache for t in c.self_attn)  # 2L x (B, H, P + 1, Dh)
            weights = torch.stack([w[:, :, 0].mean(dim=1) for w in out.cross_attention])  # (L, B, S)
            return (out.logits[:, -1], *presents, weights)

    return Encoder().eval(), Decoder().eval()


def export_onnx(model: Seq2Seq, directory: str | Path, *, opset: int = OPSET) -> None:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into ``directory``."""
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


def verify(model: Seq2Seq, translator: OnnxTranslator, sentences: Sequence[str],
           batch_size: int = 64) -> dict[str, Any]:
    """Greedy tokens through onnxruntime vs PyTorch on ``sentences``."""
    encoded = translator.codec.encode(sentences)
    same = total = 0
    worst = 0.0
    for chunk in translator.codec.batches(encoded, batch_size):
        src = translator.codec.pad([encoded[i][0] for i in chunk])
        ours = greedy_decode(translator.stepper, src, return_attention=True)
        ref = greedy_decode(model, src, return_attention=True)
        equal_shapes = ref.tokens.shape == ours.tokens.shape
        for row in range(len(chunk)):
            total += 1
            same += equal_shapes and bool((ref.tokens[row] == ours.tokens[row]).all())
        if equal_shapes:
            worst = max(worst, float(np.abs(ref.attention.mean(axis=2) - ours.attention[:, :, 0]).max()))
    return {"sentences": total, "identical": same, "max_cross_weight_diff": worst}


def export_seq2seq(checkpoint: str | Path, out_dir: str | Path, *, sentences: Sequence[str] = (),
                   min_identical: float = 1.0, opset: int = OPSET,
                   label: str | None = None) -> dict[str, Any]:
    """Export, check and verify; ``out_dir`` is built in a temporary folder beside it and
    renamed into place only when at least ``min_identical`` of the verification sentences
    (``sentences``, else random ones) decode to identical tokens through onnxruntime.
    ``label`` names the checkpoint in ``seq2seq.json`` (default: its path), e.g. the files
    that were averaged into it."""
    import onnx

    model, record = load_seq2seq(checkpoint)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        export_onnx(model, tmp, opset=opset)
        for name in (ENCODER, DECODER):
            onnx.checker.check_model(str(tmp / name))
        TextCodec.from_record(record).save(tmp)
        meta = {"config": model.config.to_dict(), "opset": opset, "checkpoint": label or str(checkpoint),
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
        for path in tmp.iterdir():  # normal permissions, not those of temporary files
            path.chmod(file_mode())
        tmp.chmod(dir_mode())
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
    vocab = codec.tokens(range(codec.src.get_vocab_size()), "src")
    words = [w for w in vocab if w and not w.startswith("<")]
    return ["".join(rng.choice(words, size=int(rng.integers(3, 20)))).replace("▁", " ").strip()
            for _ in range(count)]
