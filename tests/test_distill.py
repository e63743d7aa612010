"""Distillation (training/distill.py, model.distill): the loss terms, the teacher file of
benchmarks/cnn_baseline.py, one-line errors for a teacher that does not fit the data, and a
vit-train fit whose student learns the teacher's answers rather than the labels."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import CLASSES, SMOKE, fit_args, make_image_folder

from training.cnn import CNNConfig, SmallCNN
from training.distill import Distill, distill_loss
from training.teacher import load_teacher, save_cnn
from training.train import main
from vit.checkpoint import read_checkpoint
from vit.preprocess import Preprocess


def cnn_teacher(path: Path, classes: tuple[str, ...] = CLASSES, always: int | None = None,
                preprocess: Preprocess | None = None) -> Path:
    """A small CNN teacher file; ``always``: a teacher that answers that class for every image."""
    torch.manual_seed(0)
    model = SmallCNN(CNNConfig(num_classes=len(classes), widths=(8, 8, 8), stem_width=8))
    if always is not None:  # a zero head gives equal logits; a large one for `always` on the max-pooled GELUs
        with torch.no_grad():
            model[-1].weight.zero_()
            model[-1].weight[always] = 1.0
    save_cnn(model, {"class_names": list(classes), "preprocess": (preprocess or Preprocess()).to_dict(),
                     "val_acc": None, "source": "tests"}, path)
    return path


def test_loss_terms() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(distill_loss(student, teacher, "hard"), F.cross_entropy(student, teacher.argmax(-1)))
    assert float(distill_loss(teacher, teacher, "soft", 2.0)) == pytest.approx(0.0, abs=1e-6)
    p = teacher.softmax(-1)
    kl = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
    assert float(distill_loss(student, teacher, "soft")) == pytest.approx(float(kl), rel=1e-5)
    # temperature T: the KL of the softened distributions, times T^2
    p4 = (teacher / 4).softmax(-1)
    kl4 = (p4 * (p4.log() - (student / 4).log_softmax(-1))).sum(-1).mean() * 16
    assert float(distill_loss(student, teacher, "soft", 4.0)) == pytest.approx(float(kl4), rel=1e-5)


@pytest.mark.parametrize("fields,message", [
    ({"kind": "warm"}, "distill.kind must be one of ('hard', 'soft'), got 'warm'"),
    ({"weight": 1.5}, "distill.weight must be in [0, 1], got 1.5"),
    ({"temperature": 0}, "distill.temperature must be > 0, got 0"),
])
def test_bad_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Distill(teacher="t.safetensors", **fields)


def test_cnn_file_round_trip(tmp_path: Path) -> None:
    path = cnn_teacher(tmp_path / "t.safetensors")
    model, record = load_teacher(path)
    assert isinstance(model, SmallCNN) and not model.training
    assert record["class_names"] == list(CLASSES) and record["config"]["widths"] == [8, 8, 8]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_vit_checkpoint_is_a_teacher_too(tiny_checkpoint: Path) -> None:
    model, record = load_teacher(tiny_checkpoint)
    assert type(model).__name__ == "ViT" and record["class_names"] == list(CLASSES)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, len(CLASSES))


def test_student_learns_the_teachers_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             one_thread: None) -> None:
    """weight 1: the labels play no part; a teacher that always says class 2 makes a student
    that says class 2 to everything, so validation accuracy is class 2's share (1/3)."""
    folder = make_image_folder(tmp_path / "images")
    teacher = cnn_teacher(tmp_path / "teacher.safetensors", always=2)
    monkeypatch.chdir(tmp_path)
    main(fit_args(folder, tmp_path / "cache", "--trainer.max_epochs", "3", "--model.lr", "3e-3",
                  "--model.warmup_epochs", "0", "--model.distill.teacher", str(teacher),
                  "--model.distill.weight", "1.0"))
    run = tmp_path / "runs" / "smoke" / "version_0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("train_teacher_loss_epoch") for r in rows)
    last = [r for r in rows if r.get("val_acc")][-1]
    assert float(last["val_acc"]) == pytest.approx(1 / 3, abs=1e-6)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["hyper_parameters"]["distill"] == {"teacher": str(teacher), "weight": 1.0, "kind": "hard",
                                                   "temperature": 1.0}
    state, record = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert record["source"] == "trained from scratch; distilled from teacher.safetensors"
    assert all(k.startswith(("patch_embed", "blocks", "norm", "head", "pos_embed", "cls_token", "reg_token",
                             "fc_norm")) for k in state)  # the teacher is not saved with the student
    teacher.unlink()  # validating the student needs no teacher
    main(["validate", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
          str(tmp_path / "cache"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.enable_progress_bar", "false"])
    rows = list(csv.DictReader((tmp_path / "runs" / "smoke" / "version_1" / "metrics.csv").open()))
    assert float(next(r for r in rows if r.get("val_acc"))["val_acc"]) == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize("case,message", [
    ("missing", "model.distill.teacher: {path}: no such checkpoint file"),
    ("classes", "model.distill.teacher: {path}: its classes ['x', 'y', 'z'] are not the data's"),
    ("normalization", "model.distill.teacher: {path}: it was trained on images normalized with mean [0.5"),
])
def test_a_teacher_that_does_not_fit_is_a_one_line_error(tmp_path: Path, case: str, message: str,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "teacher.safetensors"
    if case == "classes":
        cnn_teacher(path, classes=("x", "y", "z"))
    elif case == "normalization":
        cnn_teacher(path, preprocess=Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    folder = make_image_folder(tmp_path / "images", per_class=4)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(folder, tmp_path / "cache", "--model.distill.teacher", str(path)))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vit-train: error:")]
    assert len(errors) == 1 and message.format(path=path) in errors[0], errors
