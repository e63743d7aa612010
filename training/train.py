"""``vit-train``: Lightning's CLI for every model and data module of the project.

    vit-train fit --config training/configs/cifar10.yaml
    vit-train fit --config training/configs/cifar10.yaml --model.pretrained vit_tiny.safetensors
    vit-train fit --config training/configs/cifar10.yaml --ckpt_path last      # resume
    vit-train validate --config training/configs/cifar10.yaml --ckpt_path last
    vit-train fit --config training/configs/cifar10.yaml --print_config        # every option

Model and data are chosen by ``class_path`` in the config (any ``LightningModule`` and
``LightningDataModule``), so the image classifier and the text Transformer share this CLI.

Where a run goes: every run gets a folder ``<trainer.default_root_dir>/version_N`` holding
its metrics (``metrics.csv``), TensorBoard events (``tb/``), checkpoints
(``checkpoints/``) and the config it ran with (``config.yaml``); the configured loggers
write there whatever their own ``save_dir`` says. ``--ckpt_path last`` resumes the newest
``last.ckpt`` under the root and goes on writing into that run's folder.
"""

from __future__ import annotations

import logging
import re
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
    """Lightning's CLI with one folder per run (see the module docstring), reading the
    model's class path of an older checkpoint under its current name."""

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None or "trainer" not in config:
            return
        root = Path(config.trainer.default_root_dir or ".")
        version = None
        if config.get("ckpt_path") == "last":
            last = latest_checkpoint(root)
            if last is not None:
                config.ckpt_path, version = str(last), run_version(last.parent.parent)
                logging.getLogger(__name__).info("resuming from %s", last)
        if version is None:
            version = next_version(root)
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            args = getattr(logger, "init_args", None)
            if args is not None and "save_dir" in args and "version" in args:
                args.save_dir, args.version = str(root), version

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


def run_version(folder: Path) -> int | None:
    """N of a run folder ``version_N``, else ``None``."""
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return int(match.group(1)) if match else None


def latest_checkpoint(root: Path) -> Path | None:
    """The newest ``last.ckpt`` of the runs under ``root`` (also in the older layout
    ``root/checkpoints/last.ckpt``)."""
    found = [p for p in [*root.glob("version_*/checkpoints/last.ckpt"), root / "checkpoints" / "last.ckpt"]
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def next_version(root: Path) -> int:
    """The N of a new run's folder under ``root``."""
    taken = [run_version(p) for p in root.glob("version_*") if p.is_dir()]
    return max([v for v in taken if v is not None], default=-1) + 1


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
