"""Image folders: which files are images, the ImageFolder layout ``root/<class>/<image>``
and the seeded train/validation split. Torch-free (os and numpy), shared by training,
evaluation, export and serving so that all of them see the same files and the same split.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .paths import REPO_ROOT

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def is_image_file(name: str | Path) -> bool:
    """Whether a file name has an image extension (any case)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def images_under(root: Path) -> list[Path]:
    """Every image file below ``root``, recursively, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


@dataclass
class FolderIndex:
    """The image files of an ImageFolder, their class indices and the class names."""

    root: Path
    files: list[Path]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def select(self, keep: Sequence[int]) -> FolderIndex:
        return FolderIndex(self.root, [self.files[i] for i in keep], [self.labels[i] for i in keep],
                           self.class_names)


def resolve_root(root: str | Path) -> Path:
    """An existing folder: ``root`` itself, or, for a relative path that does not exist from
    the current directory, the same path taken from the repository root."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).is_dir():
        return (REPO_ROOT / path).resolve()
    where = f"{path.resolve()}" + ("" if path.is_absolute() else f" or {(REPO_ROOT / path).resolve()}")
    raise DataError(f"data folder {str(root)!r} not found (looked at {where})")


def list_classes(root: Path) -> list[str]:
    """Sorted class folder names; a clear error for an empty folder or a single class."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected ImageFolder layout root/<class>/<image>)")
    if len(classes) == 1:
        raise DataError(f"{root}: only one class folder ({classes[0]!r}); a classifier needs at least two")
    return classes


def scan_folder(root: str | Path, limit_per_class: int | None = None) -> FolderIndex:
    """Index ``root/<class>/<image>``. Files without an image extension are skipped with a
    warning naming them; an empty folder, a single class or a class without images is an
    error. ``limit_per_class`` keeps the first N files (by name) of every class."""
    root = resolve_root(root)
    class_names = list_classes(root)
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        entries = sorted((e for e in os.scandir(root / name) if e.is_file()), key=lambda e: e.name)
        kept = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if not is_image_file(e.name):
                log.warning("skipping %s: not an image file (extension %r)", e.path, Path(e.name).suffix)
                continue
            kept.append(Path(e.path))
        if limit_per_class is not None:
            kept = kept[:limit_per_class]
        if not kept:
            raise DataError(f"{root / name}: class folder has no image files")
        files += kept
        labels += [label] * len(kept)
    return FolderIndex(root, files, labels, class_names)


def labeled_images(root: str | Path) -> tuple[list[Path], list[str] | None]:
    """Images under ``root`` and, for an ImageFolder (``root/<class>/<image>``), the class
    name of each; ``None`` for a folder without class subfolders."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        return images_under(root), None
    paths: list[Path] = []
    labels: list[str] = []
    for d in class_dirs:
        for p in images_under(d):
            paths.append(p)
            labels.append(d.name)
    return paths, labels


def split_indices(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: from every class, a seeded random ``val_fraction`` of
    its images (at least one when the fraction is positive) goes to validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, val = [], []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        members = members[rng.permutation(len(members))]
        n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(members))))
        if n_val >= len(members):
            raise DataError(f"class {int(label)} has {len(members)} image(s): too few to hold out "
                            f"{val_fraction:.0%} for validation")
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return sorted(train), sorted(val)
