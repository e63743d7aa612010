"""Callbacks (training/callbacks.py): Throughput counts what the module's ``batch_units`` says
(tokens for the translator), else the batch's leading size; EpochClock logs each epoch's wall
and CPU seconds."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from training.callbacks import EpochClock, Throughput, batch_size_of


class Recorder:
    """The part of a LightningModule Throughput talks to: ``log``."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, float, dict[str, Any]]] = []

    def log(self, key: str, value: float, **kw: Any) -> None:
        self.logged.append((key, value, kw))


class TokenCounter(Recorder):
    def batch_units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["src"].ne(0).sum())


def run(callback: Throughput, module: Recorder, batches: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr("training.callbacks.time.perf_counter", lambda: next(clock))
    callback.on_train_epoch_start(None, module)
    for i, batch in enumerate(batches):
        callback.on_train_batch_end(None, module, None, batch, i)


def test_throughput_counts_the_modules_batch_units(monkeypatch: pytest.MonkeyPatch) -> None:
    module = TokenCounter()
    batch = {"src": torch.tensor([[5, 6, 2], [7, 2, 0]]), "tgt_out": torch.zeros(2, 4)}
    run(Throughput(unit="tok", window=2), module, [batch] * 3, monkeypatch)
    keys = {key for key, _, _ in module.logged}
    assert keys == {"tok/s"}
    # one second per batch (the fake clock), 5 non-pad source tokens per batch
    assert [value for _, value, _ in module.logged] == [5.0, 5.0, 5.0]
    assert module.logged[0][2] == {"prog_bar": True, "on_step": True, "on_epoch": False}


def test_throughput_counts_samples_without_batch_units(monkeypatch: pytest.MonkeyPatch) -> None:
    module = Recorder()
    batches = [(torch.zeros(8, 3, 4, 4), torch.zeros(8)), (torch.zeros(4, 3, 4, 4), torch.zeros(4))]
    run(Throughput(), module, batches, monkeypatch)
    assert [(k, v) for k, v, _ in module.logged] == [("img/s", 8.0), ("img/s", 6.0)]


def test_batch_size_of_nested_batches() -> None:
    assert batch_size_of((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_size_of({"src": torch.zeros(3, 7)}) == 3
    assert batch_size_of([[torch.zeros(2)]]) == 2
    assert batch_size_of([]) == 0 and batch_size_of(torch.tensor(1.0)) == 0


def test_progress_bar_metrics_fit_a_terminal() -> None:
    from training.callbacks import compact_metrics

    shown = compact_metrics({"v_num": 3, "train_loss_step": torch.tensor(1.23456), "img/s": 4321.987,
                             "val_loss": 0.98765, "val_acc": 0.612345, "train_loss_epoch": 1.3})
    assert shown == {"train_loss": "1.23", "img/s": "4322", "val_loss": "0.988", "val_acc": "0.612"}
    line = ", ".join(f"{k}={v}" for k, v in shown.items())
    assert len(line) < 60  # with "Epoch 12: 100%|####| 211/211 [00:30<00:00, 7.0it/s, ...]" under 120


class SlowValidation(L.LightningModule):
    """One weight; each validation batch sleeps ``pause`` seconds (no CPU spent)."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.pause = pause

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        time.sleep(self.pause)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_clock_logs_wall_and_cpu_seconds_of_training_and_validation(tmp_path: Path) -> None:
    """EpochClock: one epoch_s and epoch_cpu_s per epoch in metrics.csv; validation counts
    (it runs before on_train_epoch_end) and sleeping counts in the wall time only."""
    data = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name=""), callbacks=[EpochClock()],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(SlowValidation(pause=0.2), data, data)
    rows = [r for r in csv.DictReader((tmp_path / "version_0" / "metrics.csv").open()) if r.get("epoch_s")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        wall, cpu = float(row["epoch_s"]), float(row["epoch_cpu_s"])
        assert wall >= 0.4  # two validation batches of 0.2 s each
        assert 0 < cpu < wall - 0.3  # the sleeps cost no CPU
