"""vit-train (training/train.py) end to end on a tiny folder: fit writes checkpoints and logs,
validate and predict read them, resume after SIGKILL ends at the same step, fine-tuning from
a timm checkpoint through the CLI, checkpoints of the release, one-line errors for bad folders."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import COMPAT, REPO, SMOKE, fit_args, make_image_folder, timm_checkpoint
from PIL import Image

from training.train import main
from vit.checkpoint import load_vit


def test_fit_writes_best_and_last_checkpoints_and_logs(smoke_run: Path) -> None:
    ckpts = smoke_run / "runs" / "smoke" / "version_0" / "checkpoints"
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("epoch") and "val_acc" in n for n in names)
    metrics = (smoke_run / "runs" / "smoke" / "version_0" / "metrics.csv").read_text()
    header = metrics.splitlines()[0]
    for column in ("train_loss_step", "val_acc", "val_acc5", "img/s", "lr-AdamW", "epoch_s", "epoch_cpu_s"):
        assert column in header
    assert list((smoke_run / "runs" / "smoke" / "version_0" / "tb").rglob("events.out.tfevents.*"))


def test_validate_and_predict_load_the_checkpoint(smoke_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(smoke_run)
    ckpt = smoke_run / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    folder, cache = smoke_run / "images", smoke_run / "cache"
    common = ["--config", SMOKE, "--data.root", str(folder), "--data.cache_dir", str(cache),
              "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"]
    main(["validate", *common])
    out = smoke_run / "predictions.csv"
    main(["predict", *common, "--data.predict_root", str(folder / "square"),
          "--trainer.callbacks+=training.callbacks.PredictionCSV", "--trainer.callbacks.output", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"circle", "square", "stripes"}
    assert rows[0]["path"].endswith("square/000.png") and 0 < float(rows[0]["probability"]) <= 1


def test_resume_after_sigkill_ends_with_the_same_weights(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    # the recipe's weight averaging too: its average and the raw weights must both continue
    epochs = ["--trainer.max_epochs", "8",
              "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
              "--trainer.callbacks.decay", "0.9"]
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    killed_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "training.train", *fit_args(folder, tmp_path / "cache"), *epochs]
    proc = subprocess.Popen(command, cwd=killed_dir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed_dir / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into the next epoch, past the checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < killed_step < 8 * 3

    cwd = os.getcwd()
    try:
        os.chdir(killed_dir)
        main([*fit_args(folder, tmp_path / "cache"), *epochs, "--ckpt_path", "last"])
        whole_dir.mkdir()
        os.chdir(whole_dir)
        main([*fit_args(folder, tmp_path / "cache"), *epochs])
    finally:
        os.chdir(cwd)
    resumed = torch.load(last, weights_only=True)
    whole = torch.load(whole_dir / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt",
                       weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 8 * 3
    assert resumed["epoch"] == whole["epoch"]
    # schedule, optimizer, data order, augmentation (MixUp/CutMix, erasing, TrivialAugment: the
    # smoke config keeps the recipe's defaults) and the EMA continued exactly: the same weights
    assert set(whole["current_model_state"]) == set(whole["state_dict"])  # raw and EMA weights
    for part in ("state_dict", "current_model_state"):
        for key, value in whole[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=0, msg=f"{part}: {key}")
    # and one metrics.csv holds both sittings (Lightning's own CSVLogger deleted the first)
    def validated(run: Path) -> list[int]:
        with open(run / "metrics.csv", newline="") as file:
            return sorted({int(row["epoch"]) for row in csv.DictReader(file) if row.get("val_acc")})

    whole_run = whole_dir / "runs" / "smoke" / "version_0"
    assert validated(last.parents[1]) == validated(whole_run) == list(range(8))


def test_fine_tune_from_timm_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = timm_checkpoint(tmp_path, "safetensors")
    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    main([*fit_args(folder, tmp_path / "cache"), "--trainer.max_epochs", "1", "--model.pretrained", str(path),
          "--model.vit", "{num_heads: 2, attn_drop_rate: 0.1}", "--model.layer_decay", "0.75",
          "--model.freeze_blocks", "1"])
    ckpt = tmp_path / "runs" / "smoke" / "version_0" / "checkpoints" / "last.ckpt"
    model, record = load_vit(ckpt)
    assert record["config"]["num_classes"] == 3 and record["config"]["image_size"] == 32
    assert record["config"]["dim"] == 64 and "timm_vit.safetensors" in record["source"]
    assert record["config"]["attn_drop_rate"] == 0.1  # a field of both model.vit and the model's own
    # frozen block 0 kept the timm weights; block 1 trained
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert not torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    # the smoke config's architecture fields differ (dim 32): the checkpoint's own wins
    path.unlink()
    main(["validate", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
          str(tmp_path / "cache"), "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize("layout", ["empty", "one_class"])
def test_bad_folder_is_a_one_line_cli_error(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    else:
        make_image_folder(root, per_class=2, classes=("only",))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(root, tmp_path / "cache"))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vit-train: error:")]
    assert len(errors) == 1 and str(root) in errors[0]


def test_validates_a_checkpoint_of_the_release_before_the_rename(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The release's vit-train checkpoint names its model ``training.classifier.ImageClassifier``
    (since renamed): vit-train still restores it, and validates its own weights."""
    from training.train import RENAMED
    from vit.image_folder import scan_folder, split_indices
    from vit.preprocess import Preprocess, preprocess_image

    ckpt = COMPAT / "vit_conv.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["_class_path"] in RENAMED
    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    main(["validate", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
          str(tmp_path / "cache"), "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"])
    rows = list(csv.DictReader((tmp_path / "runs" / "smoke" / "version_0" / "metrics.csv").open()))
    logged = next(r for r in rows if r.get("val_acc"))
    # the same accuracy from the checkpoint's weights, on the data module's validation split
    model, record = load_vit(ckpt)
    assert record["config"]["stem"] == "conv"
    index = scan_folder(folder, limit_per_class=16)
    _, val = split_indices(index.labels, 0.25, seed=0)
    spec = Preprocess(**record["preprocess"])
    x = torch.stack([torch.from_numpy(preprocess_image(Image.open(index.files[i]), spec)) for i in val])
    y = torch.tensor([index.labels[i] for i in val])
    with torch.no_grad():
        logits = model(x)
    assert float(logged["val_acc"]) == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert float(logged["val_loss"]) == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                                      abs=1e-5)


class _Unsafe:
    """A class safe loading (``weights_only=True``) refuses to rebuild."""


@pytest.mark.parametrize("extra,message", [
    (["--model.lr", "-1"], "model.lr must be a number > 0, got -1.0"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1, got 0"),
    (["--model.lrr", "0.1"], "model: Option 'lrr' is not accepted (did you mean lr?)"),
    (["--mdoel.lr", "0.1"], "unrecognized arguments: --mdoel.lr 0.1 (did you mean --model.lr?)"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs: expected int, got 'x'"),
    (["--model.pretrained", "{unsafe}"], "model.pretrained: {unsafe}: holds Python objects that safe"),
    (["--ckpt_path", "{unsafe}"], "{unsafe}: holds Python objects that safe loading refuses"),
    (["--ckpt_path", "{foreign}"], "{foreign}: its hyperparameters do not fit this model (model: "),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"unsafe": tmp_path / "unsafe.ckpt", "foreign": tmp_path / "foreign.ckpt"}
    torch.save({"thing": _Unsafe()}, files["unsafe"])
    hparams = {"_class_path": "training.image_classifier.ImageClassifier", "lr": "fast"}
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, files["foreign"])
    folder = make_image_folder(tmp_path / "images", per_class=4)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(folder, tmp_path / "cache", *[a.format(**files) for a in extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vit-train: error:")]
    assert len(errors) == 1 and message.format(**files) in errors[0], err
    assert "Traceback" not in err and "weights_only=False" not in err


def test_fit_ends_with_a_summary_and_the_next_commands(smoke_run: Path) -> None:
    from types import SimpleNamespace

    from training.train import fit_summary

    run = smoke_run / "runs" / "smoke" / "version_0"
    best = next(str(p) for p in (run / "checkpoints").glob("epoch*.ckpt"))
    callbacks = [SimpleNamespace(monitor="val_acc", best_model_path=best, best_model_score=torch.tensor(0.75),
                                 last_model_path="", dirpath=str(run / "checkpoints")),
                 SimpleNamespace(monitor=None, best_model_path=str(run / "checkpoints" / "last.ckpt"),
                                 best_model_score=None, last_model_path="", dirpath=str(run / "checkpoints"))]
    trainer = SimpleNamespace(checkpoint_callbacks=callbacks, interrupted=False, current_epoch=2,
                              global_step=6, log_dir=str(run), default_root_dir=str(run.parent))
    assert fit_summary(trainer, is_translator=False).splitlines() == [
        f"vit-train: fit finished after 2 epochs (6 steps); run folder {run}",
        f"  best checkpoint: {best} (val_acc 0.7500)",
        f"  last checkpoint: {run / 'checkpoints' / 'last.ckpt'}",
        f"  logs: {run / 'metrics.csv'}, {run / 'tb'}",
        f"  config: {run / 'config.yaml'}",
        f"  next: vit-export {best} -o model.onnx --attention",
        "        vit-demo --model model.onnx",
    ]
    text = fit_summary(trainer, is_translator=True)
    assert f"vit-export {best} -o translator/" in text and "vit-translate --model translator/" in text


def test_third_party_adverts_are_off(caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from training.train import quiet_third_parties

    quiet_third_parties()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/)")
        rank_zero_info("GPU available: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text


@pytest.mark.parametrize("precision,has_bf16,warned", [
    ("bf16-mixed", False, True), ("bf16-mixed", True, False), ("32", False, False)])
def test_bf16_on_a_cpu_without_bf16_instructions_is_named(precision: str, has_bf16: bool, warned: bool,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch import Trainer

    from training import train

    monkeypatch.setattr(train, "cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level(logging.WARNING, logger="training.train"):
        train.warn_slow_bf16(Trainer(accelerator="cpu", precision=precision, logger=False,
                                     enable_checkpointing=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "training.train"]
    expected = ("trainer.precision bf16-mixed: this CPU has no bf16 instructions (AVX512-BF16 or AMX), "
                "so bf16 runs emulated, ~40x slower than fp32; pass --trainer.precision 32")
    assert lines == ([expected] if warned else [])
