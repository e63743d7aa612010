"""Checkpoint files for vit-train (training/checkpoint_io.py): written atomically (a failed
write leaves the previous file), read back with one clear error for a missing, truncated,
foreign or unsafe file."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMOKE, make_image_folder

from training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, read_checkpoint_file
from training.train import main
from vit.errors import DataError


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot be saved")


class Custom:
    """A class safe loading (``weights_only=True``) refuses to rebuild."""


def test_atomic_save_replaces_the_file_or_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
    assert read_checkpoint_file(path)["step"] == 1
    atomic_torch_save({"step": 2}, path)
    assert read_checkpoint_file(path) == {"step": 2}
    with pytest.raises(RuntimeError, match="cannot be saved"):
        atomic_torch_save({"step": 3, "bad": Unpicklable()}, path)
    assert read_checkpoint_file(path) == {"step": 2}  # the previous checkpoint, intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_checkpoint_io_round_trip(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"a": torch.arange(4)}, "epoch": 3}, tmp_path / "a.ckpt")
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["a"], torch.arange(4))
    with pytest.raises(DataError, match="no such checkpoint file"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_unreadable_checkpoints_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, good)
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[:200])
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    torch.save({"thing": Custom()}, tmp_path / "unsafe.ckpt")
    for name, message in (("missing.ckpt", "no such checkpoint file"),
                          ("cut.ckpt", "not a readable checkpoint"),
                          ("list.ckpt", "not a Lightning checkpoint"),
                          ("unsafe.ckpt", "safe loading refuses")):
        with pytest.raises(DataError, match=message) as info:
            read_checkpoint_file(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name))


def test_vit_train_reports_a_truncated_checkpoint_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    folder = make_image_folder(tmp_path / "images", per_class=4)
    cut = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}, "hyper_parameters": {}}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", SMOKE, "--data.root", str(folder), "--data.cache_dir",
              str(tmp_path / "cache"), "--ckpt_path", str(cut), "--trainer.enable_progress_bar", "false"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vit-train: error:")]
    assert len(errors) == 1 and str(cut) in errors[0] and "not a readable checkpoint" in errors[0]


KILLED_SAVE = """
import sys, time, torch
from training.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
big = {"w": torch.randn(64, 1024, 1024)}  # 256 MB: the write takes a while
print("saving", flush=True)
io.save_checkpoint(big, sys.argv[1])
print("saved", flush=True)
"""


def _other_filesystem() -> bool:
    shm = Path("/dev/shm")
    return shm.is_dir() and shm.stat().st_dev != Path(tempfile.gettempdir()).stat().st_dev


@pytest.mark.skipif(not _other_filesystem(), reason="needs /dev/shm on another filesystem than /tmp")
def test_kill_during_a_save_on_another_filesystem_keeps_the_previous_checkpoint() -> None:
    """The checkpoint folder on tmpfs (/dev/shm), the temp folder on disk: a SIGKILL in the
    middle of a save leaves the previous checkpoint whole."""
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        target = folder / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
        proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not list(folder.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert AtomicCheckpointIO().load_checkpoint(target) == {"step": 1}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
