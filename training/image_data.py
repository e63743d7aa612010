"""LightningDataModule for ImageFolder layouts (``root/<class>/<image>``).

Two loading modes, one recipe:

* ``cache``: every image is decoded once (:mod:`training.image_cache`) into a uint8 tensor kept
  on disk; an epoch only indexes that tensor, and augmentation runs on whole batches after
  they reach the device (:class:`training.augment.BatchAugment`). No per-image Python.
* ``stream``: DataLoader workers decode and augment each image with torchvision v2
  transforms; for folders too large to hold in memory.

Both hand uint8 batches to the device; normalization (and, for training, erasing and
MixUp/CutMix) is done there. Validation images equal
:func:`vit.preprocess.preprocess_image` for :attr:`ImageFolderData.preprocess`.

Training batches are ``(images, labels, targets)`` with soft targets (B, K); evaluation
and prediction batches are ``(images, labels)`` (labels are -1 for unlabeled images).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from vit.errors import DataError
from vit.image_folder import FolderIndex, images_under, list_classes, resolve_root, scan_folder, split_indices
from vit.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess

from .augment import Augment, BatchAugment, Normalize, image_transform
from .image_cache import DecodedImages, cached_decode, readable_header, try_load_image

log = logging.getLogger(__name__)

MODES = ("cache", "stream")


class EpochShuffle(DistributedSampler):
    """The training order: a permutation seeded by ``seed`` + epoch, this rank's share of it
    when a process group is up (Lightning then leaves it in place), drawn when the first
    index is taken -- after Lightning set the epoch, which it does only after making the
    first iterator of a run. So a run resumed at an epoch boundary sees the order the
    uninterrupted run saw."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[int]:
        yield from super().__iter__()


class TensorImages(Dataset):
    """Rows ``indices`` of a decoded uint8 tensor (N, 3, S, S); a batch is one gather."""

    def __init__(self, images: Tensor, labels: Tensor, indices: Sequence[int] | None = None) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = self.indices[i]
        return self.images[j], self.labels[j]

    def __getitems__(self, batch: list[int]) -> tuple[Tensor, Tensor]:
        rows = self.indices[torch.as_tensor(batch)]
        return self.images[rows], self.labels[rows]  # (B, 3, S, S) uint8, (B,)


def _whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


class ImageFiles(Dataset):
    """Images decoded per item (stream mode); unreadable ones come back as ``None``."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], spec: Preprocess,
                 transform: Any = None) -> None:
        self.files, self.labels, self.spec, self.transform = list(files), list(labels), spec, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        array = try_load_image(self.files[i], self.spec)
        if array is None:
            return None
        image = torch.from_numpy(array)  # (3, S, S) uint8
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


def _collate_readable(items: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor]:
    return default_collate([item for item in items if item is not None])


class ImageFolderData(L.LightningDataModule):
    """ImageFolder data with a seeded train/val split, cached or streamed.

    Args:
        root: training folder ``root/<class>/<image>``. A relative path is taken from the
            current directory, else from the repository root.
        val_root: separate validation folder (same classes); if unset, ``val_fraction`` of
            each class of ``root`` is held out, chosen by ``seed``.
        test_root: folder for ``vit-train test``; defaults to the validation data.
        predict_root: folder of images (any layout) for ``vit-train predict``; defaults to
            the validation data.
        mode: ``cache`` (decode once, batch augmentation) or ``stream`` (DataLoader workers).
        cache_dir: where ``cache`` mode keeps decoded folders (default ``~/.cache/vit-service``).
        limit_per_class: keep only the first N images of each class (quick runs).
        image_size / resize_size / interpolation / mean / std: the evaluation preprocessing
            (:class:`vit.preprocess.Preprocess`); stored in checkpoints for serving.
        augment: training augmentation strength.
    """

    def __init__(
        self,
        root: str = "../shared/data/cifar10/train",
        val_root: str | None = None,
        test_root: str | None = None,
        predict_root: str | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        mode: str = "cache",
        cache_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        limit_per_class: int | None = None,
        image_size: int = 32,
        resize_size: int | None = None,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
        augment: Augment | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.root, self.val_root, self.test_root, self.predict_root = root, val_root, test_root, predict_root
        self.val_fraction, self.seed, self.mode, self.cache_dir = val_fraction, seed, mode, cache_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.limit_per_class = num_workers, limit_per_class
        self.preprocess = Preprocess(crop_size=image_size, resize_size=resize_size or image_size,
                                     interpolation=interpolation, mean=tuple(mean), std=tuple(std))
        self.augment = augment or Augment()
        self.normalize = Normalize(self.preprocess)
        self.class_names: list[str] = []
        self.predict_files: list[str] = []
        self.val_files: list[str] = []
        self._datasets: dict[str, Dataset] = {}
        self._batch_augment: BatchAugment | None = None

    @property
    def num_classes(self) -> int:
        if not self.class_names:
            self.class_names = list_classes(resolve_root(self.root))
        return len(self.class_names)

    # ----------------------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        """Build the decode cache once (rank 0), so that other ranks only read it."""
        if self.mode == "cache":
            self._decoded(self.root)
            for extra in (self.val_root, self.test_root):
                if extra:
                    self._decoded(extra)

    def setup(self, stage: str) -> None:
        own_folder = {"test": self.test_root, "predict": self.predict_root}.get(stage)
        if not own_folder and "val" not in self._datasets:
            self._setup_train_val()
        if not self.class_names:
            self.class_names = list_classes(resolve_root(self.root))
        if stage == "test" and own_folder:
            self._datasets["test"] = self._eval_dataset(own_folder)[0]
        if stage == "predict" and own_folder:
            self._setup_predict(own_folder)

    def _decoded(self, root: str) -> DecodedImages:
        index = scan_folder(root, self.limit_per_class)
        return cached_decode(index, self.preprocess, self.cache_dir, workers=os.cpu_count() or 1)

    def _stream_index(self, root: str) -> FolderIndex:
        index = scan_folder(root, self.limit_per_class)
        return index.select([i for i, f in enumerate(index.files) if readable_header(f)])

    def _check_classes(self, root: str, class_names: list[str]) -> None:
        if class_names != self.class_names:
            raise DataError(f"{root}: class folders {class_names} differ from the training folder's "
                            f"{self.class_names}")

    def _setup_train_val(self) -> None:
        if self.mode == "cache":
            decoded = self._decoded(self.root)
            self.class_names = decoded.class_names
            if self.val_root:
                train_idx = list(range(len(decoded.labels)))
                val, self.val_files = self._eval_dataset(self.val_root)
            else:
                train_idx, val_idx = split_indices(decoded.labels.tolist(), self.val_fraction, self.seed)
                val = TensorImages(decoded.images, decoded.labels, val_idx)
                self.val_files = [str(decoded.root / decoded.files[i]) for i in val_idx]
            train = TensorImages(decoded.images, decoded.labels, train_idx)
        else:
            index = self._stream_index(self.root)
            self.class_names = index.class_names
            transform = image_transform(self.augment, self.preprocess.crop_size)
            if self.val_root:
                train_index = index
                val, self.val_files = self._eval_dataset(self.val_root)
            else:
                train_idx, val_idx = split_indices(index.labels, self.val_fraction, self.seed)
                train_index = index.select(train_idx)
                val_index = index.select(val_idx)
                val = ImageFiles(val_index.files, val_index.labels, self.preprocess)
                self.val_files = [str(f) for f in val_index.files]
            train = ImageFiles(train_index.files, train_index.labels, self.preprocess, transform)
        if len(train) == 0:
            raise DataError(f"{self.root}: no training images left after the validation split")
        self._datasets.update(train=train, val=val)
        self._batch_augment = BatchAugment(self.augment, len(self.class_names))
        log.info("%s: %d classes, %d train / %d val images (%s mode)", self.root, len(self.class_names),
                 len(train), len(val), self.mode)

    def _eval_dataset(self, root: str) -> tuple[Dataset, list[str]]:
        """All images of another folder with the training folder's classes (val/test)."""
        if self.mode == "cache":
            decoded = self._decoded(root)
            self._check_classes(root, decoded.class_names)
            files = [str(decoded.root / f) for f in decoded.files]
            return TensorImages(decoded.images, decoded.labels), files
        index = self._stream_index(root)
        self._check_classes(root, index.class_names)
        return ImageFiles(index.files, index.labels, self.preprocess), [str(f) for f in index.files]

    def _setup_predict(self, folder: str) -> None:
        root = resolve_root(folder)
        files = [f for f in images_under(root) if readable_header(f)]
        if not files:
            raise DataError(f"{root}: no image files to predict")
        self.predict_files = [str(f) for f in files]
        self._datasets["predict"] = ImageFiles(files, [-1] * len(files), self.preprocess)

    # ------------------------------------------------------------------------ dataloaders
    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = EpochShuffle(dataset, self.seed) if train else None
        # the loader's own generator: making an iterator takes no draw from the global stream
        # that augmentation uses (Lightning makes the first one before the epoch is seeded)
        generator = torch.Generator().manual_seed(self.seed)
        if isinstance(dataset, TensorImages):
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                              collate_fn=_whole_batch, generator=generator)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=_collate_readable, pin_memory=torch.cuda.is_available(),
                          generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["test" if "test" in self._datasets else "val"], train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict" if "predict" in self._datasets else "val"], train=False)

    def predict_paths(self) -> list[str]:
        """The files behind the predict dataloader, in order."""
        return self.predict_files if "predict" in self._datasets else self.val_files

    # ------------------------------------------------------------------ on-device batches
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.trainer is not None and self.trainer.training and self._batch_augment is not None:
            return self.augment_batch(images, labels)
        return self.normalize(images), labels

    def augment_batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 (B, 3, S, S) -> augmented float images, labels, soft targets (B, K)."""
        assert self._batch_augment is not None
        if self.mode == "cache":
            images = self._batch_augment.geometric(images)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        x, targets = self._batch_augment.mix(self.normalize(images), labels, epoch)
        return x, labels, targets
