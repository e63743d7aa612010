"""Finding and opening image files for serving (export/images.py): files, folders, globs,
one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.images import ImageLoadError, Missing, find_images, load_image


@pytest.mark.parametrize("kind,message", [
    ("truncated", "truncated or corrupt image data"),
    ("empty", "empty file (0 bytes)"),
    ("text", "not an image format PIL can read"),
    ("bomb", "possible decompression bomb"),
])
def test_bad_files_get_a_clear_error_naming_them(bad_files: dict[str, Path], kind: str, message: str) -> None:
    path = bad_files[kind]
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_pixel_limit_is_configurable(tiny_data: Path) -> None:
    path = sorted(tiny_data.rglob("*.png"))[0]
    assert load_image(path).size == (32, 32)
    with pytest.raises(ImageLoadError, match="1024 pixels is above the limit of 1000"):
        load_image(path, max_pixels=1000)


def test_find_images_expands_files_folders_and_globs(tiny_data: Path, tmp_path: Path) -> None:
    one = sorted((tiny_data / "square").glob("*.png"))[0]
    (tiny_data / "README.txt").write_text("skipped inside folders")
    found = find_images([one, tiny_data, str(tiny_data / "stripes" / "00[01].png"), tmp_path / "nope.jpg"])
    assert found[0] == one
    assert len(found) == 1 + 36 + 2 + 1 and all(p.suffix == ".png" for p in found[1:-1])
    assert found[-1] == Missing(str(tmp_path / "nope.jpg")) and "no such file" in found[-1].message
    assert find_images([str(tiny_data / "**" / "011.png")]) == sorted(tiny_data.rglob("011.png"))


def test_find_images_says_why_an_argument_gave_no_image(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    skipped: list[Path] = []
    found = find_images([tmp_path / "empty", tmp_path / "loop", tiny_data / "circle"], skipped=skipped)
    assert found[0] == Missing(str(tmp_path / "empty"), "folder has no image files (1 other file)")
    assert found[1].message == f"{tmp_path / 'loop'}: symlink loop (the link resolves back to itself)"
    assert len(found) == 2 + 12 and skipped == [tmp_path / "empty" / "notes.txt"]
