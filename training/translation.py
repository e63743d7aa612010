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
:func:`vit.seq2seq.load_seq2seq`), load with ``torch.load(weights_only=True)``, and the
tokenizer JSON is also written beside them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import sacrebleu
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from training.optim import WarmupCosine
from training.text_data import TextTokenizers
from vit.decoding import greedy_decode
from vit.seq2seq import RECORD_KEY, Seq2Seq, Seq2SeqConfig

log = logging.getLogger(__name__)

ARCH_FIELDS = ("dim", "num_heads", "enc_depth", "dec_depth", "mlp_ratio", "activation", "dropout",
               "attn_dropout", "max_len", "share_embeddings", "tie_output", "norm_first")


class WarmupInverseSqrt:
    """lr factor at optimizer step ``step``: linear warmup, then ``sqrt(warmup / step)``
    (Vaswani et al. 2017, eq. 3, normalised to 1 at the end of warmup). Plain state."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = max(1, warmup_steps)

    def __call__(self, step: int) -> float:
        step += 1
        return min(step / self.warmup_steps, math.sqrt(self.warmup_steps / step))


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
        """``attention_kernel``: ``"math"`` runs scaled dot-product attention with PyTorch's
        math kernel, ``"auto"`` lets it choose. On CPU the flash kernel's backward pass is slow
        for sentence-length sequences: the math kernel made a training step ~25% faster here.
        ``seq2seq``: a full config dict, filled in when the model is built (so that a
        checkpoint's hyperparameters rebuild the same model); leave it unset."""
        super().__init__()
        if schedule not in ("cosine", "inverse_sqrt"):
            raise ValueError(
                f"TranslationModule.schedule must be 'cosine' or 'inverse_sqrt', got {schedule!r}"
            )
        if attention_kernel not in ("math", "auto"):
            raise ValueError(
                f"TranslationModule.attention_kernel must be 'math' or 'auto', got {attention_kernel!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"TranslationModule.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.model: Seq2Seq | None = None
        self.tokenizers: TextTokenizers | None = None
        self.best_bleu: float | None = None
        self._val: dict[str, Any] = {}
        self._clock: tuple[float, int] | None = None

    # ------------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        """Take the tokenizers (vocabulary sizes, special ids) from the data module."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        toks = getattr(dm, "tokenizers", None)
        if toks is None:
            if self.tokenizers is None:
                raise ValueError("TranslationModule needs a data module with tokenizers (TextDataModule)")
            return
        if self.tokenizers is not None and self.tokenizers.to_record() != toks.to_record():
            raise ValueError("the data module's tokenizer differs from the model's; point "
                             "data.tokenizer_dir at the tokenizer this model was trained with")
        self.tokenizers = toks
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
            toks = self.tokenizers
            arch = {k: hp[k] for k in ARCH_FIELDS}
            if arch["share_embeddings"] and not toks.joint:
                log.warning("share_embeddings needs a joint vocabulary; using separate embeddings")
                arch["share_embeddings"] = False
            config = Seq2SeqConfig(src_vocab_size=toks.src.get_vocab_size(),
                                   tgt_vocab_size=toks.tgt.get_vocab_size(), **toks.special_ids(), **arch)
        self.model = Seq2Seq(config)
        hp.seq2seq = config.to_dict()
        log.info("Seq2Seq with %.2fM parameters: %s", self.model.num_params() / 1e6, config)

    # ------------------------------------------------------------------------ steps
    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.model(src, tgt_in)

    def _kernel(self) -> contextlib.AbstractContextManager:
        if self.hparams.attention_kernel == "math":
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def _loss(self, batch: dict[str, Any], smoothing: float) -> tuple[Tensor, int]:
        """Mean cross-entropy over the non-pad target tokens, and their count."""
        with self._kernel():
            logits = self.model(batch["src"], batch["tgt_in"])  # (B, T, V)
        target = batch["tgt_out"]  # (B, T)
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), label_smoothing=smoothing,
                               ignore_index=self.model.config.pad_id)
        return loss, int((target != self.model.config.pad_id).sum())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, n_tokens = self._loss(batch, self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=n_tokens)
        self._log_throughput(n_tokens + int(batch["src"].ne(self.model.config.pad_id).sum()))
        return loss

    def _log_throughput(self, n_tokens: int) -> None:
        """Source + target tokens per second since the previous batch."""
        now = time.perf_counter()
        if self._clock is not None and now > self._clock[0]:
            self.log("tok/s", self._clock[1] / (now - self._clock[0]), prog_bar=True, on_step=True,
                     on_epoch=False)
        self._clock = (now, n_tokens)

    def on_train_epoch_start(self) -> None:
        self._clock = None

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": 0.0, "tokens": 0, "hyps": [], "refs": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, n_tokens = self._loss(batch, 0.0)
        self._val["loss"] += float(loss) * n_tokens
        self._val["tokens"] += n_tokens
        if self.hparams.bleu:
            self._val["hyps"] += self.translate_ids(batch["src"])
            self._val["refs"] += list(batch["refs"])

    def translate_ids(self, src: Tensor) -> list[str]:
        """Greedy translations of a padded source batch, detokenized."""
        with self._kernel():
            tokens = greedy_decode(self.model, src).tokens.tolist()
        eos = self.model.config.eos_id
        ids = [row[: row.index(eos)] if eos in row else row for row in tokens]
        return self.tokenizers.tgt.decode_batch(ids, skip_special_tokens=True)

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("tokens"):
            return
        loss = self._val["loss"] / self._val["tokens"]
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_ppl", math.exp(min(loss, 50.0)))
        if self.hparams.bleu and self._val["hyps"]:
            bleu = sacrebleu.corpus_bleu(self._val["hyps"], [self._val["refs"]]).score
            self.log("val_bleu", bleu, prog_bar=True)
            if not self.trainer.sanity_checking and (self.best_bleu is None or bleu > self.best_bleu):
                self.best_bleu = bleu
            log.info("val BLEU %.2f, e.g. %r -> %r", bleu, self._val["refs"][0], self._val["hyps"][0])

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
        """The checkpoint's ``seq2seq`` record (see :func:`vit.seq2seq.load_seq2seq`)."""
        return {"config": self.model.config.to_dict(), **self.tokenizers.to_record(),
                "val_bleu": self.best_bleu, "source": "vit-train (training.translation.TranslationModule)"}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = self.seq2seq_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the model and tokenizers from the checkpoint's record, which win over the
        configured ones (and must match the data module's tokenizer when training goes on)."""
        record = checkpoint.get(RECORD_KEY)
        if not record:
            raise ValueError(f"checkpoint has no '{RECORD_KEY}' record; not a translation checkpoint")
        toks = TextTokenizers.from_record(record)
        if self.tokenizers is not None and self.tokenizers.to_record() != toks.to_record():
            raise ValueError("the checkpoint's tokenizer differs from the data module's; point "
                             "data.tokenizer_dir at the tokenizer saved beside the checkpoint")
        self.tokenizers = toks
        config = Seq2SeqConfig(**record["config"])
        if self.model is None or self.model.config != config:
            self.model = Seq2Seq(config)
        self.hparams.seq2seq = config.to_dict()
        self.best_bleu = record.get("val_bleu")

    def on_train_start(self) -> None:
        """Write the tokenizer JSON beside the checkpoints, so that a checkpoint folder
        holds everything decoding needs even outside the checkpoint file."""
        callback = self.trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and self.trainer.is_global_zero:
            self.tokenizers.save(Path(dirpath))
