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
from training.distill import Distill, Teacher, distill_loss
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
    ({"teacher": []}, "distill.teacher must name at least one file"),
    ({"teacher_weights": [1.0, 2.0]},
     "distill.teacher_weights must be 1 weights >= 0, one a teacher file and not all 0, got [1.0, 2.0]"),
    ({"teacher": ["a", "b"], "teacher_weights": [0, 0]}, "distill.teacher_weights must be 2 weights"),
    ({"kind": "warm"}, "distill.kind must be one of ('hard', 'soft'), got 'warm'"),
    ({"weight": 1.5}, "distill.weight must be in [0, 1], got 1.5"),
    ({"temperature": 0}, "distill.temperature must be > 0, got 0"),
])
def test_bad_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Distill(**{"teacher": "t.safetensors", **fields})


def test_ensemble_and_flip_tta(tmp_path: Path) -> None:
    """An ensemble answers the weighted mean of its members' probabilities; with flip_tta each
    member's mean over the image and its mirror image, so a mirrored batch gets the same answer."""
    def member(name: str, seed: int) -> Path:  # the head scaled up: a tiny CNN's features barely vary
        torch.manual_seed(seed)
        model = SmallCNN(CNNConfig(num_classes=len(CLASSES), widths=(8, 8, 8), stem_width=8))
        with torch.no_grad():
            model[-1].weight.mul_(1000.0)
        save_cnn(model, {"class_names": list(CLASSES), "preprocess": Preprocess().to_dict(), "val_acc": None,
                         "source": "tests"}, tmp_path / name)
        return tmp_path / name

    a, b = member("a.safetensors", 0), member("b.safetensors", 1)
    images = torch.randn(5, 3, 32, 32)
    images[..., :12] += 4.0  # a bright left side: the mirror image looks different
    one = Teacher(Distill(teacher=str(a)), list(CLASSES), Preprocess())
    p_a, p_b = (load_teacher(f)[0](images).softmax(-1) for f in (a, b))
    assert torch.allclose(one(images).exp(), p_a, atol=1e-5)
    ensemble = Teacher(Distill(teacher=[str(a), str(b)], teacher_weights=[3.0, 1.0]), list(CLASSES),
                       Preprocess())
    assert torch.allclose(ensemble(images).exp(), 0.75 * p_a + 0.25 * p_b, atol=1e-5)
    flipped = Teacher(Distill(teacher=[str(a), str(b)], flip_tta=True), list(CLASSES), Preprocess())
    q_a, q_b = (load_teacher(f)[0](images.flip(-1)).softmax(-1) for f in (a, b))
    assert torch.allclose(flipped(images).exp(), (p_a + q_a + p_b + q_b) / 4, atol=1e-5)
    assert torch.allclose(flipped(images), flipped(images.flip(-1)), atol=1e-5)
    assert not torch.allclose(one(images), one(images.flip(-1)), atol=1e-3)
    # hard distillation from log-probabilities is the same as from the logits
    student = torch.randn(5, len(CLASSES))
    logits = load_teacher(a)[0](images)
    assert torch.equal(distill_loss(student, one(images), "hard"), distill_loss(student, logits, "hard"))
    assert float(distill_loss(student, one(images), "soft", 2.0)) == pytest.approx(
        float(distill_loss(student, logits, "soft", 2.0)), rel=1e-5)


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
    twin = cnn_teacher(tmp_path / "twin.safetensors", always=2)  # an ensemble of two, each seeing mirrors too
    monkeypatch.chdir(tmp_path)
    main(fit_args(folder, tmp_path / "cache", "--trainer.max_epochs", "3", "--model.lr", "3e-3",
                  "--model.warmup_epochs", "0", "--model.distill.teacher", f"[{teacher}, {twin}]",
                  "--model.distill.flip_tta", "true", "--model.distill.weight", "1.0"))
    run = tmp_path / "runs" / "smoke" / "version_0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("train_teacher_loss_epoch") for r in rows)
    last = [r for r in rows if r.get("val_acc")][-1]
    assert float(last["val_acc"]) == pytest.approx(1 / 3, abs=1e-6)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["hyper_parameters"]["distill"] == {
        "teacher": [str(teacher), str(twin)], "weight": 1.0, "kind": "hard", "temperature": 1.0,
        "teacher_weights": None, "flip_tta": True}
    state, record = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert record["source"] == "trained from scratch; distilled from teacher.safetensors + twin.safetensors"
    assert all(k.startswith(("patch_embed", "blocks", "norm", "head", "pos_embed", "cls_token", "reg_token",
                             "fc_norm")) for k in state)  # the teacher is not saved with the student
    teacher.unlink()  # validating the student needs no teacher
    twin.unlink()
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
