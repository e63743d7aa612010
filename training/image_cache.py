"""The decode-once image cache of an ImageFolder (:mod:`vit.image_folder` finds the files).

Images are decoded with PIL exactly as :func:`vit.preprocess.preprocess_image` does
(``to_rgb`` then ``resize_and_crop``) into uint8 (3, S, S) arrays, S = ``crop_size``;
normalization happens later, on whole batches.

The cache holds every decodable image of a folder as one uint8 tensor (N, 3, S, S). Its
file name is a hash of the folder's file list (relative paths, sizes, mtimes) and of the
geometry of the preprocessing, so any change to the folder or to the image size makes a
new one; it is written atomically (a uniquely named temporary file in the cache folder,
then a rename), so processes building it at once never clash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vit.errors import DataError
from vit.image_folder import FolderIndex
from vit.preprocess import Preprocess, resize_and_crop, to_rgb

from .checkpoint_io import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def load_resized(path: Path, spec: Preprocess) -> np.ndarray:
    """uint8 (3, S, S): decode, convert to RGB, resize and center-crop as validation does."""
    with Image.open(path) as image:
        rgb = np.asarray(resize_and_crop(to_rgb(image), spec))  # (S, S, 3)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, S, S)


_warned: set[Path] = set()  # files already named in a warning by this process


def warn_unreadable(path: Path, reason: str) -> None:
    """One warning per file and process: the file is skipped, training goes on."""
    if path not in _warned:
        _warned.add(path)
        reason = reason.replace(f" '{path}'", "").replace(f" {path}", "")  # PIL repeats the path
        log.warning("skipping %s: not a readable image (%s)", path, reason)


def try_load_image(path: Path, spec: Preprocess) -> np.ndarray | None:
    """:func:`load_resized`, or ``None`` after a warning naming a corrupt or non-image file."""
    try:
        return load_resized(path, spec)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        warn_unreadable(path, str(exc))
        return None


def readable_header(path: Path) -> bool:
    """Whether PIL recognises the file as an image (reads the header only); warns if not."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 -- parsing the header is the check
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        warn_unreadable(path, str(exc))
        return False


def _decode_chunk(args: tuple[list[Path], Preprocess]) -> list[np.ndarray | None]:
    paths, spec = args
    return [try_load_image(p, spec) for p in paths]


def _geometry(spec: Preprocess) -> dict[str, object]:
    return {"crop_size": spec.crop_size, "resize_size": spec.resize_size, "interpolation": spec.interpolation}


def cache_key(index: FolderIndex, spec: Preprocess) -> str:
    """Hash of the file list (relative path, size, mtime) and the preprocessing geometry."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **_geometry(spec)}).encode())
    for path, label in zip(index.files, index.labels, strict=True):
        st = path.stat()
        h.update(f"{path.relative_to(index.root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vit-service"


@dataclass
class DecodedImages:
    """Decoded images of a folder: uint8 (N, 3, S, S), int64 labels (N,), the files kept
    (relative to ``root``)."""

    root: Path
    images: Tensor
    labels: Tensor
    files: list[str]
    class_names: list[str]


def decode_folder(index: FolderIndex, spec: Preprocess, workers: int = 0) -> DecodedImages:
    """Decode every image of ``index``; unreadable files are warned about and left out."""
    chunks = [index.files[i:i + 512] for i in range(0, len(index), 512)]
    if workers > 1 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            decoded = [a for chunk in pool.map(_decode_chunk, [(c, spec) for c in chunks]) for a in chunk]
    else:
        decoded = [a for c in chunks for a in _decode_chunk((c, spec))]
    keep = [i for i, a in enumerate(decoded) if a is not None]
    if not keep:
        raise DataError(f"{index.root}: none of the {len(index)} image files could be read")
    images = torch.from_numpy(np.stack([decoded[i] for i in keep]))  # (N, 3, S, S)
    labels = torch.tensor([index.labels[i] for i in keep], dtype=torch.int64)
    files = [str(index.files[i].relative_to(index.root)) for i in keep]
    return DecodedImages(index.root, images, labels, files, index.class_names)


def cached_decode(index: FolderIndex, spec: Preprocess, cache_dir: str | Path | None = None,
                  workers: int = 0) -> DecodedImages:
    """:func:`decode_folder` through the on-disk cache (read if present, else written)."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache_dir / f"images-{cache_key(index, spec)}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            decoded = DecodedImages(index.root, blob["images"], blob["labels"], blob["files"],
                                    blob["class_names"])
            _warn_skipped(index, decoded)
            log.info("image cache hit: %s (%d images)", path, len(decoded.files))
            return decoded
        except (RuntimeError, KeyError, OSError) as exc:
            log.warning("ignoring unreadable image cache %s (%s); decoding again", path, exc)
    log.info("decoding %d images of %s into %s", len(index), index.root, path)
    decoded = decode_folder(index, spec, workers)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"images": decoded.images, "labels": decoded.labels, "files": decoded.files,
                       "class_names": decoded.class_names}, path)
    return decoded


def _warn_skipped(index: FolderIndex, decoded: DecodedImages) -> None:
    """On a cache hit, name again the files that could not be decoded when it was built."""
    kept = set(decoded.files)
    for path in index.files:
        if str(path.relative_to(index.root)) not in kept:
            warn_unreadable(path, "found when the image cache was built")
