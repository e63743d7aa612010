"""A CSV logger for runs that are resumed into their own folder.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its folder is not empty,
so a run resumed with ``--ckpt_path last`` (which vit-train continues in the same
``version_N/`` folder) lost every earlier sitting's metrics. This one keeps the file and
appends to it: one ``metrics.csv`` per run, from its first epoch to its last. Rows of an
epoch that was interrupted and rerun appear twice; readers take the last row per epoch
(:mod:`training.learning_curve` does).
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    """Lightning's writer, except that an existing ``metrics.csv`` is kept and appended to
    (its header becomes the starting columns, so new rows line up with the old ones)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that keeps the metrics of earlier sittings."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
