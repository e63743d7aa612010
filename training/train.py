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
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from vit.errors import ConfigError, DataError

from . import callbacks, image_classifier, image_data  # noqa: F401 -- short class names in configs
from .checkpoint_io import AtomicCheckpointIO, read_checkpoint_file

# class paths of modules that were renamed, as checkpoints written before the rename name them
RENAMED = {"training.classifier.ImageClassifier": "training.image_classifier.ImageClassifier"}


class TrainCLI(LightningCLI):
    """Lightning's CLI, reading the model's class path of an older checkpoint under its
    current name."""

    def _parse_ckpt_path(self) -> None:
        """As Lightning's own: the hyperparameters of ``--ckpt_path FILE`` update the model's
        config, with the class path translated through :data:`RENAMED`."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = read_checkpoint_file(ckpt_path).get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            class_path = hparams.pop("_class_path")
            hparams = {"class_path": RENAMED.get(class_path, class_path), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            print(f"vit-train: error: {ckpt_path}: its hyperparameters do not fit this model",
                  file=sys.stderr)
            raise


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        TrainCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"plugins": [AtomicCheckpointIO()]},
            args=args,
        )
    except (DataError, ConfigError) as exc:
        print(f"vit-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
