"""``vit-predict --model model.onnx PATH...``: classify image files with an exported model.

PATHs are files, folders (searched recursively) or glob patterns. One record per image,
in input order: ``{"path", "labels", "probabilities"}``, or ``{"path", "error"}`` for a
file that cannot be read -- the run goes on, and the exit status is 1 if any failed.
Records go to stdout as JSON lines, or with ``-o`` to a ``.jsonl`` or ``.csv`` file
written atomically. Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vit.paths import DEFAULT_CLASSIFIER

from .images import ImageLoadError, Missing, find_images, load_image
from .onnx_classifier import OnnxClassifier

CSV_FIELDS = ("path", "labels", "probabilities", "error")


def classify(clf: OnnxClassifier, items: list[Path | Missing], *, top_k: int,
             batch_size: int) -> Iterator[dict[str, Any]]:
    """One record per item, in order; bad files become error records."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        records: list[dict[str, Any]] = []
        arrays, slots = [], []
        for item in chunk:
            if isinstance(item, Missing):
                records.append({"path": item.arg, "error": item.message})
                continue
            try:
                arrays.append(clf.preprocess(load_image(item)))
            except (ImageLoadError, OSError, ValueError) as exc:
                message = str(exc) if str(item) in str(exc) else f"{item}: {exc}"
                records.append({"path": str(item), "error": message})
                continue
            slots.append(len(records))
            records.append({"path": str(item)})
        if arrays:
            import numpy as np

            predictions = clf.decode(clf.predict_batch(np.concatenate(arrays)), top_k)
            for slot, pred in zip(slots, predictions, strict=True):
                records[slot]["labels"] = pred.labels
                records[slot]["probabilities"] = [round(p, 6) for p in pred.probs]
        yield from records


def _csv_row(record: dict[str, Any]) -> dict[str, str]:
    return {"path": record["path"], "labels": json.dumps(record.get("labels", [])),
            "probabilities": json.dumps(record.get("probabilities", [])), "error": record.get("error", "")}


class RecordWriter:
    """JSON lines to a stream, or JSON lines / CSV to a file via a tmp file + rename."""

    def __init__(self, output: Path | None) -> None:
        self.output = output
        self._tmp: str | None = None
        if output is None:
            self.stream: IO[str] = sys.stdout
            self.format = "jsonl"
            return
        self.format = "csv" if output.suffix.lower() == ".csv" else "jsonl"
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        self.stream = os.fdopen(fd, "w", newline="" if self.format == "csv" else None, encoding="utf-8")
        self._csv = csv.DictWriter(self.stream, CSV_FIELDS) if self.format == "csv" else None
        if self._csv:
            self._csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.format == "csv":
            self._csv.writerow(_csv_row(record))
        else:
            self.stream.write(json.dumps(record) + "\n")
            if self.output is None:
                self.stream.flush()

    def commit(self) -> None:
        if self._tmp:
            self.stream.close()
            os.replace(self._tmp, self.output)
            self._tmp = None

    def discard(self) -> None:
        if self._tmp:
            self.stream.close()
            os.unlink(self._tmp)
            self._tmp = None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vit-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--model", type=Path, default=None,
                   help="exported .onnx file (default: models/cifar10_vit.onnx in the repository)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--provider", action="append",
                   help="execution provider: cpu (default), cuda, tensorrt or an onnxruntime name; "
                        "repeat for a preference list")
    p.add_argument("-o", "--output", type=Path, help="write records to a .jsonl or .csv file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.top_k < 1 or args.batch_size < 1:
        print("vit-predict: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    model = args.model
    if model is None:
        model = DEFAULT_CLASSIFIER
        if not model.is_file():
            print(f"vit-predict: no model at {model}; train one with vit-train and export it with "
                  f"`vit-export CHECKPOINT -o {model}`, or pass --model FILE.onnx", file=sys.stderr)
            return 2
    try:
        clf = OnnxClassifier(model, providers=args.provider)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vit-predict: {exc}", file=sys.stderr)
        return 2
    items = find_images(args.paths)
    writer = RecordWriter(args.output)
    failed = 0
    try:
        from tqdm import tqdm

        with tqdm(total=len(items), unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            for record in classify(clf, items, top_k=args.top_k, batch_size=args.batch_size):
                failed += "error" in record
                writer.write(record)
                bar.update(1)
        writer.commit()
    finally:
        writer.discard()
    if failed:
        print(f"vit-predict: {failed} of {len(items)} inputs failed (see their error records)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
