"""vit-train end to end on a tiny folder: fit writes checkpoints that validate, predict,
torch.load(weights_only=True) and vit.checkpoint.load_vit all read; resume after SIGKILL
ends at the same step; fine-tuning from timm checkpoints; clear errors for bad folders."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from training.classifier import ImageClassifier
from training.cli import main
from vit.checkpoint import load_vit

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "training" / "configs" / "smoke.yaml")


def fit_args(folder: Path, cache: Path, *extra: str) -> list[str]:
    return ["fit", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir", str(cache),
            "--trainer.enable_progress_bar", "false", *extra]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke fit (2 epochs) shared by the tests that read its checkpoints; returns its cwd."""
    work = tmp_path_factory.mktemp("smoke")
    folder = make_image_folder(work / "images")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        main(fit_args(folder, work / "cache"))
    finally:
        os.chdir(cwd)
    return work


def test_fit_writes_best_and_last_checkpoints_and_logs(smoke_run: Path) -> None:
    ckpts = smoke_run / "runs" / "smoke" / "checkpoints"
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("epoch") and "val_acc" in n for n in names)
    metrics = (smoke_run / "runs" / "smoke" / "csv" / "version_0" / "metrics.csv").read_text()
    header = metrics.splitlines()[0]
    for column in ("train_loss_step", "val_acc", "val_acc5", "img/s", "lr-AdamW"):
        assert column in header
    assert list((smoke_run / "runs" / "smoke" / "tb").rglob("events.out.tfevents.*"))


def test_checkpoint_is_weights_only_and_carries_the_vit_record(smoke_run: Path) -> None:
    path = smoke_run / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    record = ckpt["vit"]
    assert record["class_names"] == ["circle", "square", "stripes"]
    assert record["config"]["num_classes"] == 3 and record["config"]["image_size"] == 32
    assert record["preprocess"]["crop_size"] == 32
    assert isinstance(record["val_acc"], float) and 0.0 <= record["val_acc"] <= 1.0
    assert ckpt["global_step"] == 2 * 3  # 27 training images, batch 8, drop_last
    assert all(k.startswith("model.") for k in ckpt["state_dict"])


def test_load_vit_matches_the_lightning_module(smoke_run: Path) -> None:
    path = smoke_run / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    model, record = load_vit(path)
    module = ImageClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert module.class_names == record["class_names"]
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), module(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(model(images), module.model(images), rtol=0, atol=0)


def test_validate_and_predict_load_the_checkpoint(smoke_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(smoke_run)
    ckpt = smoke_run / "runs" / "smoke" / "checkpoints" / "last.ckpt"
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


def test_resume_after_sigkill_ends_at_the_same_step(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    epochs = ["--trainer.max_epochs", "8"]
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    killed_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "training.cli", *fit_args(folder, tmp_path / "cache"), *epochs]
    proc = subprocess.Popen(command, cwd=killed_dir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed_dir / "runs" / "smoke" / "checkpoints" / "last.ckpt"
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
    whole = torch.load(whole_dir / "runs" / "smoke" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 8 * 3
    assert resumed["epoch"] == whole["epoch"]


def test_compiled_fit_with_conv_stem_checkpoints_plain_weights(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile: true`` trains the compiled ViT (conv stem left eager), validates eagerly and
    writes the same state-dict keys as an eager run."""
    from torch._dynamo.utils import counters

    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    counters.clear()
    main(fit_args(folder, tmp_path / "cache", "--trainer.max_epochs", "1", "--model.compile", "true",
                  "--model.stem", "conv"))
    assert counters["stats"]["unique_graphs"] >= 1  # the Transformer was compiled
    ckpt = torch.load(tmp_path / "runs" / "smoke" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["vit"]["config"]["stem"] == "conv"
    keys = set(ckpt["state_dict"])
    assert not any("_orig_mod" in k for k in keys) and "model.patch_embed.convs.0.weight" in keys
    model, _ = load_vit(tmp_path / "runs" / "smoke" / "checkpoints" / "last.ckpt")
    assert set(model.state_dict()) == {k.removeprefix("model.") for k in keys if k.startswith("model.")}


def timm_checkpoint(tmp_path: Path, fmt: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised timm ViT (16x16 images, 5 classes, 2 heads of 32) saved as ``fmt``."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    timm_model = VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=64, depth=2,
                                   num_heads=2, mlp_ratio=2.0)
    state = {k: v.detach().clone() for k, v in timm_model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "timm_vit.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "timm_vit.pth"
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_pretrained_timm_gets_a_new_head_and_image_size(tmp_path: Path, fmt: str) -> None:
    path, state = timm_checkpoint(tmp_path, fmt)
    module = ImageClassifier(pretrained=str(path), num_classes=3, image_size=32, vit={"num_heads": 2},
                             freeze_blocks=1, layer_decay=0.75)
    module.configure_model()
    model = module.model
    assert model.config.num_classes == 3 and model.config.image_hw == (32, 32) and model.config.num_heads == 2
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 64)
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "cls_token", "patch_embed.proj.weight"):
        assert torch.equal(model.state_dict()[key], state[key])
    assert not model.blocks[0].attn.qkv.weight.requires_grad and model.blocks[1].attn.qkv.weight.requires_grad
    assert not model.pos_embed.requires_grad and model.head.weight.requires_grad
    assert "timm_vit" in module.source


def test_fine_tune_from_timm_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, state = timm_checkpoint(tmp_path, "safetensors")
    folder = make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    main([*fit_args(folder, tmp_path / "cache"), "--trainer.max_epochs", "1", "--model.pretrained", str(path),
          "--model.vit", "{num_heads: 2}", "--model.layer_decay", "0.75", "--model.freeze_blocks", "1"])
    ckpt = tmp_path / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    model, record = load_vit(ckpt)
    assert record["config"]["num_classes"] == 3 and record["config"]["image_size"] == 32
    assert record["config"]["dim"] == 64 and "timm_vit.safetensors" in record["source"]
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
