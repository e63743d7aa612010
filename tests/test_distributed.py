"""Training under DDP (training/distributed.py and what it serves), as users run it:
``vit-train fit ... --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu``
(gloo, two processes, tiny data). Each rank gets its own data and its own random stream,
the weights stay identical, and what is logged equals what one process computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SMOKE, make_image_folder, write_corpus

from training.distributed import gather_objects, seed_epoch, world_size

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
MULTI30K = str(REPO / "training" / "configs" / "multi30k.yaml")
TINY_TEXT = ["--data.vocab_size", "60", "--data.max_tokens", "120", "--data.val_max_tokens", "60",
             "--data.max_sentence_len", "30", "--model.dim", "32", "--model.num_heads", "4",
             "--model.enc_depth", "1", "--model.dec_depth", "1", "--model.mlp_ratio", "2.0",
             "--model.max_len", "32", "--trainer.precision", "32", "--trainer.check_val_every_n_epoch", "1"]


def vit_train(args: list[str], cwd: Path, probe: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "OMP_NUM_THREADS": "1"}
    if probe is not None:
        args = [*args, "--trainer.callbacks+=ddp_probe.RecordRank", "--trainer.callbacks.out", str(probe)]
    command = [sys.executable, "-m", "training.train", *args, "--trainer.enable_progress_bar", "false"]
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def ranks(probe: Path) -> list[dict]:
    return [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_single_process_helpers() -> None:
    assert world_size() == 1 and gather_objects({"a": 1}) == [{"a": 1}]
    seed_epoch(0, 3, seed=7)
    a = torch.rand(3)
    seed_epoch(1, 3, seed=7)
    b = torch.rand(3)
    seed_epoch(0, 3, seed=7)
    assert torch.equal(torch.rand(3), a) and not torch.equal(a, b)  # per (seed, rank, epoch)


def test_image_training_shards_data_and_randomness_not_weights(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", per_class=24)
    probe = tmp_path / "probe"
    vit_train(["fit", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
               str(tmp_path / "cache"), "--trainer.max_epochs", "1", *DDP], tmp_path, probe)
    r0, r1 = ranks(probe)
    assert (r0["world"], r1["world"]) == (2, 2)
    train = len(r0["train"]) + len(r1["train"])
    assert len(r0["train"]) == len(r1["train"])  # equal shares
    # smoke.yaml keeps 16 images a class and holds out a quarter: 36 training images, disjoint halves
    assert len(set(r0["train"]) | set(r1["train"])) == train == 36
    assert r0["first_batch"] != r1["first_batch"]  # each rank its own crops, flips, ops, MixUp
    assert r0["weights_after_step"] == r1["weights_after_step"]  # gradients are averaged: same weights
    assert r0["metrics"]["val_loss"] == r1["metrics"]["val_loss"]  # synced


def test_text_training_shards_batches_and_logs_global_bleu(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "data", n_train=160, n_val=31)
    data = [a for k, v in paths.items() for a in (f"--data.{k}", v)]
    common = ["--config", MULTI30K, *data, *TINY_TEXT, "--data.tokenizer_dir", str(tmp_path / "tok")]
    probe = tmp_path / "probe"
    vit_train(["fit", *common, "--trainer.max_epochs", "2", "--trainer.default_root_dir",
               str(tmp_path / "ddp"), *DDP], tmp_path, probe)
    r0, r1 = ranks(probe)
    assert len(r0["train"]) > 0 and len(set(r0["train"]) | set(r1["train"])) == 160  # every pair of epoch 0
    assert len(set(r0["train"]) & set(r1["train"])) <= 20  # disjoint but for one repeated batch
    assert sorted(set(r0["val"]) | set(r1["val"])) == list(range(31))
    assert r0["weights_after_step"] == r1["weights_after_step"]
    assert r0["metrics"]["val_bleu"] == r1["metrics"]["val_bleu"]
    # one process validating the same weights computes the same BLEU and loss
    last = tmp_path / "ddp" / "version_0" / "checkpoints" / "last.ckpt"
    single = tmp_path / "single"
    vit_train(["validate", *common, "--ckpt_path", str(last), "--trainer.default_root_dir", str(single),
               "--trainer.devices", "1"], tmp_path)
    rows = (single / "version_0" / "metrics.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[-1].split(",")
    logged = {k: float(v) for k, v in zip(header, values, strict=True) if v}
    assert logged["val_bleu"] == pytest.approx(r0["metrics"]["val_bleu"], abs=1e-9)
    assert logged["val_loss"] == pytest.approx(r0["metrics"]["val_loss"], rel=1e-5)
    assert np.isfinite(logged["val_loss"])


@pytest.mark.slow
def test_killed_ddp_fit_resumes_at_the_same_step(tmp_path: Path) -> None:
    """A 2-rank fit killed after a checkpoint and resumed with ``--ckpt_path last`` ends at the
    step an uninterrupted run ends at, in the same run folder."""
    import signal
    import time

    folder = make_image_folder(tmp_path / "images", per_class=24)
    args = ["fit", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
            str(tmp_path / "cache"), "--trainer.max_epochs", "6", "--trainer.default_root_dir",
            str(tmp_path / "runs"), *DDP]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks
    proc.wait()
    killed_step = torch.load(last, weights_only=True)["global_step"]
    vit_train([*args, "--ckpt_path", "last"], tmp_path)
    resumed = torch.load(last, weights_only=True)
    assert 0 < killed_step < resumed["global_step"] == 6 * (36 // 2 // 8)  # 2 batches of 8 a rank, 6 epochs
    assert not (tmp_path / "runs" / "version_1").exists()  # the resumed run went on in its own folder


@pytest.mark.parametrize("config", sorted(p.stem for p in (REPO / "training" / "configs").glob("*.yaml")))
def test_every_config_puts_its_run_under_default_root_dir(config: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from training.train import TrainCLI

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    (root / "version_0").mkdir(parents=True)  # an earlier run
    cli = TrainCLI(args=["--config", str(REPO / "training" / "configs" / f"{config}.yaml"),
                         "--trainer.default_root_dir", str(root)], run=False, subclass_mode_model=True,
                   subclass_mode_data=True)
    logs = [Path(logger.log_dir) for logger in cli.trainer.loggers]  # CSV, TensorBoard
    assert logs == [root / "version_1", root / "version_1" / "tb"]
    assert all(cb.dirpath is None for cb in cli.trainer.checkpoint_callbacks)  # beside the run's logs
    assert not (tmp_path / "runs").exists()
