"""Callbacks that Lightning does not ship: throughput on the progress bar, the time each
epoch took, a progress bar whose metric line fits a terminal, and a CSV writer for
``vit-train predict``."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from torch import Tensor


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size_of(next(iter(batch.values())))
    return int(batch.shape[0]) if isinstance(batch, Tensor) and batch.dim() > 0 else 0


class CompactProgressBar(TQDMProgressBar):
    """Lightning's progress bar with a short metric line: no ``v_num``, no ``_epoch``
    duplicates of step metrics, ``_step`` dropped from names, three significant digits
    (``train_loss=1.23, img/s=4322, val_acc=0.612``), 100 and above as whole numbers."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, int | str | float | dict[str, float]]:
        return compact_metrics(super().get_metrics(trainer, pl_module))


def compact_metrics(items: dict[str, Any]) -> dict[str, Any]:
    """The progress bar's metrics, shortened as :class:`CompactProgressBar` shows them."""
    shown: dict[str, Any] = {}
    for name, value in items.items():
        if name == "v_num" or (name.endswith("_epoch") and name.removesuffix("_epoch") + "_step" in items):
            continue
        if isinstance(value, Tensor):
            value = value.item()
        if isinstance(value, float):
            value = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
        shown[name.removesuffix("_step")] = value
    return shown


class Throughput(L.Callback):
    """Logs training samples per second (``<unit>/s``, e.g. ``img/s`` or ``tok/s``) on the
    progress bar and to the loggers, measured over the last ``window`` batches of the
    current epoch. A batch counts what the module's ``batch_units(batch)`` says, if it has
    one (the translator counts tokens), else the leading size of its first tensor.

    Lightning's ``ThroughputMonitor`` logs only to loggers and needs a batch-size function
    in code; this one works from YAML.
    """

    def __init__(self, unit: str = "img", window: int = 20) -> None:
        self.key = f"{unit}/s"
        self.window = max(1, window)
        self._times: list[float] = []
        self._sizes: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._times, self._sizes = [time.perf_counter()], []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._times.append(time.perf_counter())
        count = getattr(pl_module, "batch_units", None)
        self._sizes.append(count(batch) if callable(count) else batch_size_of(batch))
        self._times, self._sizes = self._times[-self.window - 1:], self._sizes[-self.window:]
        elapsed = self._times[-1] - self._times[0]
        if elapsed > 0:
            pl_module.log(self.key, sum(self._sizes) / elapsed, prog_bar=True, on_step=True, on_epoch=False)


class EpochClock(L.Callback):
    """Logs what each epoch cost, training and validation together: ``epoch_s`` (wall
    seconds) and ``epoch_cpu_s`` (this process's CPU seconds over all its threads; the
    ``cache`` data mode augments in this process, stream mode's DataLoader workers are not
    counted). Time a run spends stopped (``kill -STOP``) counts in ``epoch_s`` but not in
    ``epoch_cpu_s``; summed over a run's ``metrics.csv`` they give the wall and CPU time a
    model card states, across any number of resumed sittings (an epoch cut short by a stop is
    repeated on resume and logged once)."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates at the end of the training epoch, before this hook: both count
        if self._start is None:
            return
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        pl_module.log_dict({"epoch_s": wall, "epoch_cpu_s": cpu}, on_step=False, on_epoch=True)
        self._start = None


class PredictionCSV(BasePredictionWriter):
    """Writes ``vit-train predict`` results to a CSV file: ``path,label,probability`` (top-1),
    atomically. Paths come from the data module's ``predict_paths()`` when it has one."""

    def __init__(self, output: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        probs = torch.cat([p for p in predictions if isinstance(p, Tensor)]) if predictions else None
        if probs is None or probs.numel() == 0:
            return
        paths_fn = getattr(trainer.datamodule, "predict_paths", None)
        paths = paths_fn() if callable(paths_fn) else [str(i) for i in range(len(probs))]
        names = getattr(pl_module, "class_names", None) or [str(i) for i in range(probs.shape[1])]
        confidence, index = probs.max(dim=1)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(self.output.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "probability"])
            for path, i, p in zip(paths, index.tolist(), confidence.tolist(), strict=True):
                writer.writerow([path, names[i], f"{p:.6f}"])
        tmp.replace(self.output)
