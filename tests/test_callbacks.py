"""Callbacks (training/callbacks.py): Throughput counts what the module's ``batch_units`` says
(tokens for the translator), else the batch's leading size."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.callbacks import Throughput, batch_size_of


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
