"""Checkpoint files that a kill at any moment cannot corrupt, and one clear line for a
checkpoint that cannot be read.

Lightning writes local checkpoints through an fsspec transaction, whose temporary file lives
in the system's temp folder: when the checkpoint folder is on another filesystem the final
step is a copy, not a rename, and a kill during it leaves a truncated file in place of the
previous good one. :class:`AtomicCheckpointIO` writes a temporary file of a unique name in
the destination folder, flushes it to disk and renames it over the target, so the target
is always either the previous checkpoint or the new one. ``vit-train`` uses it by default.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vit.command import file_mode
from vit.errors import DataError


def _is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temporary file in ``path``'s folder and a rename."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local saves and one-line load errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint_file(path, map_location=map_location, weights_only=weights_only)


def read_checkpoint_file(path: str | Path, *, map_location: Any = "cpu",
                         weights_only: bool | None = None) -> dict[str, Any]:
    """``torch.load`` of a local checkpoint, with a :class:`~vit.errors.DataError` naming
    the file for a missing, truncated, corrupt or unsafe one."""
    path = Path(str(path).removeprefix("file://"))
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location,
                                weights_only=True if weights_only is None else weights_only)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: holds Python objects that safe loading refuses (weights_only=True); "
                        "it was not written by vit-train -- load only checkpoints you trust") from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                        f"{type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict):
        raise DataError(f"{path}: not a Lightning checkpoint (holds a {type(checkpoint).__name__})")
    return checkpoint
