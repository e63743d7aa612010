"""Finding and opening image files for serving, with one clear error per bad file.

Torch-free (PIL only). :func:`load_image` decodes the whole file up front, so a
truncated or corrupt file fails here, with its name, instead of deep inside inference.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vit.image_folder import images_under


class ImageLoadError(ValueError):
    """A file that cannot be used as an image; the message starts with the path."""


def load_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file.

    ``max_pixels`` (default: PIL's ``Image.MAX_IMAGE_PIXELS``, about 89 megapixels)
    rejects decompression bombs before any pixel is decoded. Raises
    :class:`ImageLoadError` naming the file and the problem.
    """
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from exc
    if not data:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not an image format PIL can read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: too many pixels, refused as a possible decompression bomb") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. a header cut short
        raise ImageLoadError(f"{path}: truncated or corrupt image data ({exc})") from exc
    w, h = image.size
    if limit and w * h > limit:
        raise ImageLoadError(
            f"{path}: {w}x{h} = {w * h} pixels is above the limit of {limit} "
            "(possible decompression bomb)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports corrupt data in all three
        raise ImageLoadError(f"{path}: truncated or corrupt image data ({exc})") from exc
    return image


@dataclass
class Missing:
    """A command-line argument that named no file."""

    arg: str

    @property
    def message(self) -> str:
        return f"{self.arg}: no such file or directory, and no file matches it as a pattern"


def find_images(args: Iterable[str | Path]) -> list[Path | Missing]:
    """Expand command-line arguments into image paths, in order.

    A file is taken as given (whatever its extension, so a bad one gets its own error);
    a directory is searched recursively for files with an image extension; anything else
    is a glob pattern (``**`` allowed). An argument that matches nothing becomes a
    :class:`Missing` entry, so the caller can report it and go on.
    """
    found: list[Path | Missing] = []
    for arg in args:
        path = Path(arg)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(images_under(path))
        else:
            matches = sorted(glob.glob(os.fspath(arg), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            for d in (Path(m) for m in matches if Path(m).is_dir()):
                files.extend(images_under(d))
            found.extend(files or [Missing(str(arg))])
    return found
