"""The learning curve of a run as a picture, from its ``metrics.csv`` (Lightning's CSVLogger),
for model cards.

    python -m training.learning_curve runs/cifar10/version_0/metrics.csv -o models/learning_curve.png

A run resumed in several sittings may have logged into several files: give them in order;
a later file's value for an epoch replaces an earlier one. Plotted by epoch: every
validation metric given (``--metric``, default ``val_acc``) and the epoch's training loss.
``--table N`` also prints every N-th epoch (and the best and last) as a Markdown table with
the training accuracy and the time the run took (``training.callbacks.EpochClock``'s
``epoch_s`` and ``epoch_cpu_s``), and the run's total wall and CPU time.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vit.errors import DataError

OPTIONAL = ("train_loss_epoch", "train_acc", "epoch_s", "epoch_cpu_s")  # read when logged


def read_curves(paths: Sequence[str | Path], metrics: Sequence[str]) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` for ``metrics`` and those of :data:`OPTIONAL` logged."""
    curves: dict[str, dict[int, float]] = {name: {} for name in (*metrics, *OPTIONAL)}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such metrics file")
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                for name, curve in curves.items():
                    if row.get(name):
                        curve[int(row["epoch"])] = float(row[name])
    missing = [m for m in metrics if not curves[m]]
    if missing:
        raise DataError(f"{', '.join(str(p) for p in paths)}: no values of {', '.join(missing)}")
    return {name: dict(sorted(curve.items())) for name, curve in curves.items() if curve}


def plot(curves: dict[str, dict[int, float]], path: Path, title: str = "") -> None:
    """Validation metrics on the left axis, training loss on the right; epochs from 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, curve in curves.items():
        if name in OPTIONAL:
            continue
        epochs, values = [e + 1 for e in curve], list(curve.values())
        ax.plot(epochs, values, marker=".", label=name)
        best = max(range(len(values)), key=values.__getitem__)
        ax.annotate(f"{values[best]:.4g}", (epochs[best], values[best]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation")
    ax.grid(alpha=0.3)
    if "train_loss_epoch" in curves:
        loss = curves["train_loss_epoch"]
        twin = ax.twinx()
        twin.plot([e + 1 for e in loss], list(loss.values()), color="0.6", linestyle="--", label="train loss")
        twin.set_ylabel("training loss")
        twin.legend(loc="center right", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "learning curve")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def table(curves: dict[str, dict[int, float]], metrics: Sequence[str], every: int = 1) -> str:
    """Markdown rows of every ``every``-th epoch, the best (by the first metric) and the last:
    the metrics, the training accuracy, the epoch's minutes and the run's hours so far (wall
    and CPU; ``-`` where an epoch was not timed, and the totals then count timed epochs only)."""
    first = curves[metrics[0]]
    best, last = max(first, key=first.__getitem__), max(first)
    wall, cpu = curves.get("epoch_s", {}), curves.get("epoch_cpu_s", {})
    head = ["epoch", *metrics, "train_acc (augmented)", "epoch min", "wall h so far", "CPU h so far"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for epoch in sorted(first):
        if (epoch + 1) % every and epoch not in (best, last):
            continue
        cells = [f"{epoch + 1}" + (" (best)" if epoch == best else "")]
        cells += [_percent(name, curves[name].get(epoch)) for name in metrics]
        cells.append(_percent("train_acc", curves.get("train_acc", {}).get(epoch)))
        timed = epoch in wall and epoch in cpu
        cells.append(f"{wall[epoch] / 60:.1f}" if timed else "-")
        cells.append(f"{sum(v for e, v in wall.items() if e <= epoch) / 3600:.2f}" if timed else "-")
        cells.append(f"{sum(v for e, v in cpu.items() if e <= epoch) / 3600:.2f}" if timed else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if wall:
        lines.append(f"\n{len(wall)} of {len(first)} epochs timed: {sum(wall.values()) / 3600:.2f} h wall, "
                     f"{sum(cpu.values()) / 3600:.2f} h CPU")
    return "\n".join(lines)


def _percent(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if name.endswith(("acc", "acc5")) else f"{value:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.learning_curve",
                                description="Plot a run's learning curve from its metrics.csv file(s).")
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.csv of the run, in order of its sittings")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--metric", action="append", help="validation metric(s) to plot (default: val_acc)")
    p.add_argument("--title", default="")
    p.add_argument("--table", type=int, metavar="EVERY", default=None,
                   help="also print every EVERY-th epoch (and the best and last) with the time taken, "
                        "as a Markdown table")
    args = p.parse_args(argv)
    try:
        curves = read_curves(args.metrics, args.metric or ["val_acc"])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        plot(curves, args.output, args.title)
    except (DataError, OSError) as exc:
        print(f"learning_curve: error: {exc}", file=sys.stderr)
        return 2
    for name, curve in curves.items():
        last = max(curve)
        print(f"{name}: {len(curve)} epochs, last (epoch {last + 1}) {curve[last]:.4f}")
    if args.table is not None:
        print(table(curves, args.metric or ["val_acc"], max(args.table, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
