"""Image folders (vit/image_folder.py, torch-free): which files are images, folder scanning,
the seeded stratified split, labeled images, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_image_folder

from vit.errors import DataError
from vit.image_folder import (
    IMAGE_EXTENSIONS,
    FolderIndex,
    images_under,
    is_image_file,
    labeled_images,
    list_classes,
    resolve_root,
    scan_folder,
    split_indices,
)


def test_scan_and_split_are_deterministic_and_stratified(image_folder: Path) -> None:
    index = scan_folder(image_folder)
    assert index.class_names == ["circle", "square", "stripes"] and len(index) == 36
    train, val = split_indices(index.labels, 0.25, seed=3)
    assert (train, val) == split_indices(index.labels, 0.25, seed=3)
    assert split_indices(index.labels, 0.25, seed=4)[1] != val
    assert sorted(train + val) == list(range(36))
    assert [sum(index.labels[i] == c for i in val) for c in range(3)] == [3, 3, 3]


def test_relative_root_falls_back_to_the_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_root("tests") == Path(__file__).resolve().parent
    with pytest.raises(DataError, match="not found"):
        resolve_root("no/such/folder")


def test_empty_folder_and_single_class_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path / "empty")
    one = make_image_folder(tmp_path / "one", per_class=3, classes=("cat",))
    with pytest.raises(DataError, match="only one class folder"):
        scan_folder(one)
    two = make_image_folder(tmp_path / "two", per_class=3, classes=("a", "b"))
    (two / "c").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_folder(two)


def test_image_extensions_in_any_case() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp"} <= IMAGE_EXTENSIONS
    assert is_image_file("a/b.PNG") and is_image_file(Path("x.JpEg")) and not is_image_file("notes.txt")
    assert not is_image_file("png")


def test_scan_skips_non_images_with_a_warning_and_limits_per_class(image_folder: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    (image_folder / "circle" / "notes.txt").write_text("not an image")
    (image_folder / "circle" / ".hidden.png").write_bytes(b"")
    (image_folder / ".git").mkdir()  # hidden folders are not classes
    with caplog.at_level(logging.WARNING):
        index = scan_folder(image_folder, limit_per_class=5)
    assert "notes.txt" in caplog.text and ".hidden.png" not in caplog.text
    assert len(index) == 15 and index.labels == [0] * 5 + [1] * 5 + [2] * 5
    assert [p.name for p in index.files[:5]] == [f"{i:03d}.png" for i in range(5)]  # first by name
    assert list_classes(image_folder) == ["circle", "square", "stripes"]
    kept = index.select([0, 7])
    assert isinstance(kept, FolderIndex) and kept.labels == [0, 1] and kept.class_names == index.class_names


def test_split_fraction_errors_and_zero(image_folder: Path) -> None:
    labels = scan_folder(image_folder).labels
    assert split_indices(labels, 0.0, seed=0) == (list(range(36)), [])
    with pytest.raises(DataError, match="val_fraction"):
        split_indices(labels, 1.0, seed=0)
    with pytest.raises(DataError, match="too few"):
        split_indices([0, 1, 1], 0.5, seed=0)


def test_labeled_images_of_class_folders_and_flat_folders(image_folder: Path, tmp_path: Path) -> None:
    paths, labels = labeled_images(image_folder)
    assert len(paths) == 36 and labels[:12] == ["circle"] * 12 and labels[-1] == "stripes"
    assert paths == images_under(image_folder)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in paths[:3]:
        (flat / p.name.replace(".png", f"_{p.parent.name}.png")).write_bytes(p.read_bytes())
    (flat / "readme.md").write_text("not an image")
    flat_paths, flat_labels = labeled_images(flat)
    assert len(flat_paths) == 3 and flat_labels is None
    with pytest.raises(NotADirectoryError):
        labeled_images(tmp_path / "missing")


def test_image_folder_is_torch_free() -> None:
    code = "import sys, vit.image_folder; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
