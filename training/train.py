"""``vit-train``: Lightning's CLI for every model and data module of the project.

    vit-train fit --config training/configs/cifar10.yaml
    vit-train fit --config training/configs/cifar10.yaml --model.pretrained vit_tiny.safetensors
    vit-train fit --config training/configs/cifar10.yaml --ckpt_path last      # resume
    vit-train validate --config training/configs/cifar10.yaml --ckpt_path runs/cifar10/checkpoints/last.ckpt
    vit-train fit --config training/configs/cifar10.yaml --print_config        # every option

Model and data are chosen by ``class_path`` in the config (any ``LightningModule`` and
``LightningDataModule``), so the image classifier and the text Transformer share this CLI.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from vit.errors import ConfigError, DataError

from . import callbacks, image_classifier, image_data  # noqa: F401 -- short class names in configs


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (DataError, ConfigError) as exc:
        print(f"vit-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
