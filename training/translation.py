"""LightningModule for German->English (any pair) translation with :class:`vit.seq2seq.Seq2Seq`.

A thin adapter: teacher forcing with label-smoothed cross-entropy over non-pad target
tokens; validation logs the token-level loss (no smoothing) and corpus BLEU (sacreBLEU on
detokenized greedy output against the raw reference lines).

Learning rate: linear warmup, then either the paper's inverse square root decay
(``schedule="inverse_sqrt"``: ``lr * min(s / w, sqrt(w / s))``) or cosine decay to
``min_lr`` over the planned steps (``schedule="cosine"``, the default: with a fixed budget
of steps it ends at a low rate, which helps small runs).

The model's vocabulary sizes and special ids come from the data module's tokenizers.
Checkpoints carry ``checkpoint["seq2seq"]`` (config, tokenizer JSON, val BLEU; see
:mod:`vit.checkpoint`), load with ``torch.load(weights_only=True)``, and the tokenizer JSON
is also written beside them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import sacrebleu
import torch
import torch.nn.functional as F
from torch import Tensor

from vit.attention import configure_attention
from vit.checkpoint import SEQ2SEQ_KEY, legacy_seq2seq_name
from vit.decoding import greedy_decode
from vit.seq2seq import Seq2Seq, Seq2SeqConfig
from vit.text_codec import TextCodec

from .distributed import gather_objects, seed_epoch
from .optim import WarmupCosine, WarmupInverseSqrt, check_rates

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("auto", "math", "sdpa")
ARCH_FIELDS = ("dim", "num_heads", "enc_depth", "dec_depth", "mlp_ratio", "activation", "dropout",
               "attn_dropout", "max_len", "share_embeddings", "tie_output", "norm_first")


class TranslationModule(L.LightningModule):
    """Encoder-decoder Transformer training.

    Architecture arguments are :class:`vit.seq2seq.Seq2SeqConfig` fields; vocabulary sizes
    and pad/bos/eos ids come from the data module (``TextDataModule``). ``share_embeddings``
    needs a joint vocabulary and is switched off, with a warning, for per-language ones.
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 4,
        enc_depth: int = 3,
        dec_depth: int = 3,
        mlp_ratio: float = 4.0,
        activation: str = "relu",
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        max_len: int = 256,
        share_embeddings: bool = True,
        tie_output: bool = True,
        norm_first: bool = True,
        lr: float = 7e-4,
        min_lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        schedule: str = "cosine",
        label_smoothing: float = 0.1,
        bleu: bool = True,
        attention_kernel: str = "math",
        seq2seq: dict[str, Any] | None = None,
    ) -> None:
        """``attention_kernel``: ``"math"`` computes attention with the core's explicit path
        (``configure_attention(fused=False)``), ``"sdpa"`` with ``F.scaled_dot_product_attention``
        and the kernel PyTorch picks, ``"auto"`` the first on CPU (where the fused kernels'
        backward is slow for sentence-length sequences, training/README.md) and the second
        on GPUs (flash attention).
        ``seq2seq``: a full config dict, filled in when the model is built (so that a
        checkpoint's hyperparameters rebuild the same model); leave it unset."""
        super().__init__()
        check_rates(lr=lr, min_lr=min_lr)
        if schedule not in ("cosine", "inverse_sqrt"):
            raise ValueError(
                f"TranslationModule.schedule must be 'cosine' or 'inverse_sqrt', got {schedule!r}"
            )
        if attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"TranslationModule.attention_kernel must be one of {ATTENTION_KERNELS}, "
                             f"got {attention_kernel!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"TranslationModule.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.model: Seq2Seq | None = None
        self.codec: TextCodec | None = None
        self.best_bleu: float | None = None
        self._val: dict[int, tuple[float, int, str | None, str]] = {}

    # ------------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        """Take the tokenizers (vocabulary sizes, special ids) from the data module."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        toks = getattr(dm, "codec", None)
        if toks is None:
            if self.codec is None:
                raise ValueError("TranslationModule needs a data module with tokenizers (TextDataModule)")
            return
        if self.codec is not None and self.codec.to_record() != toks.to_record():
            raise ValueError("the data module's tokenizer differs from the model's; point "
                             "data.tokenizer_dir at the tokenizer this model was trained with")
        self.codec = toks
        data_len = getattr(dm.hparams, "max_sentence_len", 0)
        if data_len > self.hparams.max_len:
            raise ValueError(f"data.max_sentence_len={data_len} exceeds model.max_len={self.hparams.max_len}")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        if hp.seq2seq:
            config = Seq2SeqConfig(**hp.seq2seq)
        else:
            toks = self.codec
            arch = {k: hp[k] for k in ARCH_FIELDS}
            if arch["share_embeddings"] and not toks.joint:
                log.warning("share_embeddings needs a joint vocabulary; using separate embeddings")
                arch["share_embeddings"] = False
            config = Seq2SeqConfig(src_vocab_size=toks.src.get_vocab_size(),
                                   tgt_vocab_size=toks.tgt.get_vocab_size(), **toks.special_ids(), **arch)
        self._set_model(Seq2Seq(config))
        log.info("Seq2Seq with %.2fM parameters: %s", self.model.num_params() / 1e6, config)

    def _set_model(self, model: Seq2Seq) -> None:
        self.model = model
        self.hparams.seq2seq = model.config.to_dict()
        self._configure_attention()

    def _configure_attention(self) -> None:
        kernel = self.hparams.attention_kernel
        if kernel == "auto":
            kernel = "math" if self.device.type == "cpu" else "sdpa"
        configure_attention(self.model, fused=kernel == "sdpa")

    def on_fit_start(self) -> None:
        self._configure_attention()  # now that the module is on its device

    def on_validation_start(self) -> None:
        self._configure_attention()

    # ------------------------------------------------------------------------ steps
    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(src, tgt_in)

    def _loss(self, batch: dict[str, Any], smoothing: float) -> tuple[Tensor, int]:
        """Mean cross-entropy over the non-pad target tokens, and their count."""
        logits = self.model(batch["src"], batch["tgt_in"])  # (B, T, V)
        target = batch["tgt_out"]  # (B, T)
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), label_smoothing=smoothing,
                               ignore_index=self.model.config.pad_id)
        return loss, int((target != self.model.config.pad_id).sum())

    def on_train_epoch_start(self) -> None:
        seed_epoch(self.global_rank, self.current_epoch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, n_tokens = self._loss(batch, self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=n_tokens, sync_dist=True)
        return loss

    def batch_units(self, batch: dict[str, Any]) -> int:
        """Source + target tokens (no padding) of a batch: what ``training.callbacks.Throughput``
        counts."""
        pad = self.model.config.pad_id
        return int(batch["src"].ne(pad).sum()) + int(batch["tgt_out"].ne(pad).sum())

    def on_validation_epoch_start(self) -> None:
        self._val = {}  # dataset index -> (summed loss, tokens, hypothesis, reference)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Per-sentence loss sums and greedy translations, keyed by dataset index so that
        sentences which DDP's equal batch counts repeat are counted once."""
        pad = self.model.config.pad_id
        logits = self.model(batch["src"], batch["tgt_in"])  # (B, T, V)
        target = batch["tgt_out"]  # (B, T)
        nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=pad,
                              reduction="none").view(target.shape)  # (B, T)
        sums, tokens = nll.sum(dim=1).tolist(), target.ne(pad).sum(dim=1).tolist()
        hyps = self.translate_ids(batch["src"]) if self.hparams.bleu else [None] * len(sums)
        for i, index in enumerate(batch["index"].tolist()):
            self._val[index] = (sums[i], tokens[i], hyps[i], batch["refs"][i])

    def translate_ids(self, src: Tensor) -> list[str]:
        """Greedy translations of a padded source batch, detokenized."""
        return self.codec.decode_batch(greedy_decode(self.model, src).tokens.tolist())

    def on_validation_epoch_end(self) -> None:
        """Loss and corpus BLEU over the sentences of every rank: what one process computes."""
        merged: dict[int, tuple] = {}
        for part in gather_objects(self._val):
            merged.update(part)
        tokens = sum(v[1] for v in merged.values())
        if not tokens:
            return
        loss = sum(v[0] for v in merged.values()) / tokens
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", math.exp(min(loss, 50.0)), sync_dist=True)
        if self.hparams.bleu:
            rows = [merged[i] for i in sorted(merged)]
            bleu = sacrebleu.corpus_bleu([r[2] for r in rows], [[r[3] for r in rows]]).score
            self.log("val_bleu", bleu, prog_bar=True, sync_dist=True)
            if not self.trainer.sanity_checking and (self.best_bleu is None or bleu > self.best_bleu):
                self.best_bleu = bleu
            log.info("val BLEU %.2f, e.g. %r -> %r", bleu, rows[0][3], rows[0][2])

    # ------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for _, param in self.model.named_parameters():  # shared/tied parameters are listed once
            (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=1e-9)
        if hp.schedule == "inverse_sqrt":
            schedule: Any = WarmupInverseSqrt(hp.warmup_steps)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            schedule = WarmupCosine(hp.warmup_steps, total, hp.min_lr / hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] * len(groups))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------ checkpoint
    def seq2seq_record(self) -> dict[str, Any]:
        """The checkpoint's ``seq2seq`` record (see :mod:`vit.checkpoint`)."""
        return {"config": self.model.config.to_dict(), **self.codec.to_record(),
                "val_bleu": self.best_bleu, "source": "vit-train (training.translation.TranslationModule)"}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SEQ2SEQ_KEY] = self.seq2seq_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the model and tokenizers from the checkpoint's record, which win over the
        configured ones (and must match the data module's tokenizer when training goes on)."""
        record = checkpoint.get(SEQ2SEQ_KEY)
        if not record:
            raise ValueError(f"checkpoint has no '{SEQ2SEQ_KEY}' record; not a translation checkpoint")
        toks = TextCodec.from_record(record)
        if self.codec is not None and self.codec.to_record() != toks.to_record():
            raise ValueError("the checkpoint's tokenizer differs from the data module's; point "
                             "data.tokenizer_dir at the tokenizer saved beside the checkpoint")
        self.codec = toks
        config = Seq2SeqConfig(**record["config"])
        if self.model is None or self.model.config != config:
            self._set_model(Seq2Seq(config))
        self.best_bleu = record.get("val_bleu")
        _upgrade_legacy_names(checkpoint, self.model)

    def on_train_start(self) -> None:
        """Write the tokenizer JSON beside the checkpoints, so that a checkpoint folder
        holds everything decoding needs even outside the checkpoint file."""
        callback = self.trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and self.trainer.is_global_zero:
            self.codec.save(Path(dirpath))


def _upgrade_legacy_names(checkpoint: dict[str, Any], model: Seq2Seq) -> None:
    """A checkpoint of a translator written under an earlier layout (see
    :func:`vit.checkpoint.legacy_seq2seq_name`): rename its weights and put its optimizer
    state in today's parameter order, so that training resumes exactly."""
    state = checkpoint.get("state_dict", {})
    if all(legacy_seq2seq_name(k) == k for k in state):
        return
    seen: set[int] = set()
    old = []  # the earlier parameter order: state-dict order, shared tensors once
    for name, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            old.append((legacy_seq2seq_name(name), tensor.ndim))
    new = [("model." + name, p.ndim) for name, p in model.named_parameters()]
    # configure_optimizers puts matrices in one group, vectors in the other, each in order
    order = lambda params: [n for n, d in params if d > 1] + [n for n, d in params if d <= 1]
    position = {name: i for i, name in enumerate(order(new))}
    moved = {i: position[name] for i, name in enumerate(order(old))}
    checkpoint["state_dict"] = {legacy_seq2seq_name(k): v for k, v in state.items()}
    for opt in checkpoint.get("optimizer_states", []):
        opt["state"] = {moved[i]: v for i, v in opt["state"].items()}
    log.info("renamed the weights of a translator checkpoint written before the shared encoder block")
