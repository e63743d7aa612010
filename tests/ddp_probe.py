"""A callback the DDP tests add to ``vit-train`` (``--trainer.callbacks+=ddp_probe.RecordRank``):
each rank writes what it saw to ``<out>/rank<N>.json``. Not a test module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


class RecordRank(L.Callback):
    """Per rank: the training and validation samples of epoch 0, a fingerprint of the first
    augmented training batch, the weights after the first optimizer step, and the final
    logged metrics."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seen: dict[str, Any] = {"train": [], "val": [], "first_batch": None, "weights_after_step": None}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch != 0:
            return
        if isinstance(batch, dict):  # text: the pairs' dataset indices
            self.seen["train"] += batch["index"].tolist()
        elif batch_idx == 0:  # images: the augmented pixels of the first batch
            self.seen["first_batch"] = float(batch[0].double().abs().sum())
        if batch_idx == 0 and not isinstance(batch, dict):
            sampler = trainer.train_dataloader.sampler
            self.seen["train"] = [int(i) for i in sampler]  # this rank's share of epoch 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 1 and self.seen["weights_after_step"] is None:
            self.seen["weights_after_step"] = float(sum(p.detach().double().sum()
                                                        for p in pl_module.parameters()))

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.current_epoch == 0 and isinstance(batch, dict):
            self.seen["val"] += batch["index"].tolist()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, torch.Tensor)}
        self.out.mkdir(parents=True, exist_ok=True)
        record = {**self.seen, "rank": trainer.global_rank, "world": trainer.world_size,
                  "metrics": metrics, "global_step": trainer.global_step}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
