"""Finding and opening image files for serving, with one clear error per bad file.

Torch-free (PIL only). :func:`load_image` decodes the whole file up front, so a
truncated or corrupt file fails here, with its name, instead of deep inside inference.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vit.image_folder import images_under, is_image_file


class ImageLoadError(ValueError):
    """A file that cannot be used as an image; the message starts with the path."""


def load_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file.

    ``max_pixels`` (default: PIL's ``Image.MAX_IMAGE_PIXELS``, about 89 megapixels)
    rejects decompression bombs before any pixel is decoded. Raises
    :class:`ImageLoadError` naming the file and the problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from exc
    return decode_image(data, path, max_pixels=max_pixels)


def decode_image(data: bytes, name: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """:func:`load_image` for a file's bytes already in memory (read from object storage, or
    shipped to another machine); ``name`` starts every error message."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name}: not an image format PIL can read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: too many pixels, refused as a possible decompression bomb") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. a header cut short
        raise ImageLoadError(f"{name}: truncated or corrupt image data ({exc})") from exc
    w, h = image.size
    if limit and w * h > limit:
        raise ImageLoadError(
            f"{name}: {w}x{h} = {w * h} pixels is above the limit of {limit} "
            "(possible decompression bomb)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports corrupt data in all three
        raise ImageLoadError(f"{name}: truncated or corrupt image data ({exc})") from exc
    return image


NOT_FOUND = "no such file or directory, and no file matches it as a pattern"


@dataclass
class Missing:
    """A command-line argument that named no image: ``reason`` says why."""

    arg: str
    reason: str = NOT_FOUND

    @property
    def message(self) -> str:
        return f"{self.arg}: {self.reason}"


def find_images(args: Iterable[str | Path], *, skipped: list[Path] | None = None) -> list[Path | Missing]:
    """Expand command-line arguments into image paths, in order.

    A file is taken as given (whatever its extension, so a bad one gets its own error);
    a directory is searched recursively for files with an image extension (the other files
    are appended to ``skipped`` when given); anything else is a glob pattern (``**``
    allowed). An argument that yields no image becomes a :class:`Missing` entry saying why
    (nothing there, a folder without images, a symlink loop), so the caller can report it
    and go on.
    """
    found: list[Path | Missing] = []
    for arg in args:
        path = Path(arg)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(_folder_images(path, skipped) or [_no_images(arg, path)])
        elif _is_symlink_loop(path):
            found.append(Missing(str(arg), "symlink loop (the link resolves back to itself)"))
        else:
            matches = sorted(glob.glob(os.fspath(arg), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            for d in (Path(m) for m in matches if Path(m).is_dir()):
                files.extend(_folder_images(d, skipped))
            found.extend(files or [Missing(str(arg))])
    return found


def _folder_images(folder: Path, skipped: list[Path] | None) -> list[Path]:
    images = images_under(folder)
    if skipped is not None:
        skipped.extend(p for p in sorted(folder.rglob("*")) if p.is_file() and not is_image_file(p))
    return images


def _no_images(arg: str | Path, folder: Path) -> Missing:
    others = sum(1 for p in folder.rglob("*") if p.is_file())
    detail = f" ({others} other file{'s' if others != 1 else ''})" if others else ""
    return Missing(str(arg), f"folder has no image files{detail}")


def _is_symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False
