"""vit-train: train, validate and test the project's Vision Transformers and translators.

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

import importlib
import inspect
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vit.command import closest, description, package_version, plain
from vit.errors import ConfigError, DataError

from . import callbacks, image_classifier, image_data  # noqa: F401 -- short class names in configs
from .checkpoint_io import AtomicCheckpointIO, read_checkpoint_file

# class paths of modules that were renamed, as checkpoints written before the rename name them
RENAMED = {"training.classifier.ImageClassifier": "training.image_classifier.ImageClassifier"}


PROG = "vit-train"
# jsonargparse's lines around the reason of an error, dropped from the one line we print
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path", "Parser key")


def one_line(message: str, options: list[str] | None = None) -> str:
    """A jsonargparse error (several indented lines) as one line: the field and the reason,
    and for a misspelt option or field the closest valid name."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.strip().splitlines()]
    key = re.match(r'Parser key "([^"]+)"', lines[0]) if lines else None
    reasons = [line for line in lines if line and not line.startswith(_NOISE)] or lines[:1]
    text = "; ".join(dict.fromkeys(reasons))
    if key and not text.startswith(key.group(1)):
        text = f"{key.group(1)}: {text}"
    given = re.search(r"Given value: (.+)", message)
    if given and "Expected a" in text:
        text = re.sub(r"Expected a <class '(\w+)'>", r"expected \1", text)
        text += f", got {given.group(1).strip()!r}"
    wrong = re.search(r"Option '([^']+)' is not accepted", message)
    owner = re.search(r"given class_path '([^']+)'", message)
    if wrong and owner:
        near = closest(wrong.group(1), _init_args(owner.group(1)))
        text += f" (did you mean {near}?)" if near else ""
    unknown = re.match(r"unrecognized arguments: (\S+)", text)
    if unknown and options:
        name = unknown.group(1).split("=")[0]
        head, _, tail = name.partition(".")
        near_head = closest(head, options) if tail else None
        near = f"{near_head}.{tail}" if near_head else closest(name, options)
        text += f" (did you mean {near}?)" if near else ""
    return text


def _init_args(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


class TrainParser(LightningArgumentParser):
    """Lightning's parser printing one line for a bad option or value, and help without the
    reStructuredText markup of the docstrings it is made from."""

    def format_help(self) -> str:
        return plain(super().format_help())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        options = [s for a in self._actions for s in a.option_strings]
        parser = getattr(ex, "subcommand_parser", None)
        if parser is not None:
            options += [s for a in parser._actions for s in a.option_strings]
        print(f"{PROG}: error: {one_line(message, options)}", file=sys.stderr)
        raise SystemExit(2)


class TrainCLI(LightningCLI):
    """Lightning's CLI with one folder per run (see the module docstring), reading the
    model's class path of an older checkpoint under its current name, one line for a setting
    a class refuses, and a summary with the next commands after ``fit``."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Lightning's, with :class:`~training.callbacks.CompactProgressBar` unless the config
        brings its own progress bar or turns it off."""
        from lightning.pytorch.callbacks import ProgressBar

        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        has_bar = any(isinstance(c, ProgressBar) for c in given)
        if config.get("enable_progress_bar") is not False and not has_bar:
            extra.append(callbacks.CompactProgressBar())
        trainer = self._instantiate_trainer(config, extra)
        warn_slow_bf16(trainer)
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as exc:
            if isinstance(exc, (ConfigError, DataError)):
                raise
            cause = exc
            while cause.__cause__ is not None and not isinstance(cause, (ConfigError, DataError)):
                cause = cause.__cause__
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from exc
            raise ConfigError(one_line(str(cause if isinstance(cause, ConfigError) else exc))) from exc

    def after_fit(self) -> None:
        from .translation import TranslationModule

        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, is_translator=isinstance(self.model, TranslationModule)),
                  file=sys.stderr)

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
        exit_on_error, self.parser.exit_on_error = self.parser.exit_on_error, False
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except ArgumentError as exc:
            raise ConfigError(f"{ckpt_path}: its hyperparameters do not fit this model "
                              f"({one_line(str(exc))})") from None
        finally:
            self.parser.exit_on_error = exit_on_error


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 instructions on this CPU (AVX512-BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_slow_bf16(trainer: Any) -> None:
    """One warning when a bf16 precision meets a CPU without bf16 instructions, where oneDNN
    emulates bf16 and a ViT trains ~40x slower than in fp32."""
    precision = str(getattr(trainer.precision_plugin, "precision", ""))
    if precision.startswith("bf16") and trainer.strategy.root_device.type == "cpu" and not cpu_has_bf16():
        logging.getLogger(__name__).warning(
            "trainer.precision %s: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 runs "
            "emulated, ~40x slower than fp32; pass --trainer.precision 32", precision)


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


def fit_summary(trainer: Any, *, is_translator: bool) -> str:
    """What a finished ``fit`` left behind and what to run next (printed on stderr)."""
    ckpts = list(trainer.checkpoint_callbacks)
    ckpt = next((c for c in ckpts if c.monitor and c.best_model_path), None)
    saved = [p for c in ckpts for p in (c.last_model_path, c.best_model_path) if p]
    best = ckpt.best_model_path if ckpt else saved[-1] if saved else ""
    folder = ckpts[0].dirpath if ckpts and ckpts[0].dirpath else None
    run = Path(folder).parent if folder else Path(trainer.log_dir or trainer.default_root_dir)
    state = "stopped early" if trainer.interrupted else "finished"
    lines = [f"{PROG}: fit {state} after {trainer.current_epoch} epochs ({trainer.global_step} steps); "
             f"run folder {run}"]
    if best:
        score = ckpt.best_model_score if ckpt else None
        metric = f" ({ckpt.monitor} {float(score):.4f})" if ckpt and score is not None else ""
        lines.append(f"  best checkpoint: {best}{metric}")
    last = next((p for p in saved if Path(p).name == "last.ckpt"), "")
    if last and last != best:
        lines.append(f"  last checkpoint: {last}")
    logs = [str(p) for p in (run / "metrics.csv", run / "tb") if p.exists()]
    if logs:
        lines.append(f"  logs: {', '.join(logs)}")
    if (run / "config.yaml").is_file():
        lines.append(f"  config: {run / 'config.yaml'}")
    if best:
        if is_translator:
            nxt = [f"vit-export {best} -o translator/", 'vit-translate --model translator/ "Ein Hund läuft."']
        else:
            nxt = [f"vit-export {best} -o model.onnx --attention", "vit-demo --model model.onnx"]
        lines.append("  next: " + "\n        ".join(nxt))
    return "\n".join(lines)


class _NoAdverts(logging.Filter):
    """Drops third-party tips that advertise other products (Lightning's litlogger tip)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡" not in str(record.msg) and "litlogger" not in str(record.msg).lower()


def quiet_third_parties() -> None:
    """Adverts and deprecation warnings of dependencies off, unless ``-W``/``PYTHONWARNINGS``
    asks for warnings."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoAdverts())
    if not sys.warnoptions:
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=r"(?s).*Unable to serialize instance")


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_parties()
    try:
        TrainCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"plugins": [AtomicCheckpointIO()]},
            parser_class=TrainParser,
            parser_kwargs={"prog": PROG, "description": description(__doc__)},
            args=args,
        )
    except (DataError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
