"""vit-predict --model model.onnx PATH...: classify image files with an exported model.

PATHs are files, folders (searched recursively) or glob patterns. One record per image,
in input order: {"path": ..., "predictions": [{"label": ..., "score": ...}, ...]}, or
{"path": ..., "error": ...} for a file that cannot be read -- the run goes on, and the exit
status is 1 if any failed. Records go to stdout as JSON lines, or with -o to a .jsonl or
.csv file (flat columns path, label, score, label_2, score_2, ..., error) written
atomically. A summary (images, failures, skipped files, time) ends on stderr. Torch-free.

``--explain`` adds to each JSON record where the answer came from, as (Gh, Gw) grids of
the model's patches, row-major from the top left of the centre crop: ``class_map``, the
class-specific random-mask (RISE) map of the top class (``--explain LABEL``: of that class
instead; positive where a patch raises the class's logit, negative where it lowers it), and
``rollout``, the class-agnostic map (contribution rollout, or attention rollout for files
exported before December 2026; absent for files without attention). Costs one batch of
256 runs per image (``vit.rise``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from vit.command import file_mode, parser
from vit.paths import DEFAULT_CLASSIFIER

from .backends import add_runtime_arguments
from .images import Missing, find_images
from .onnx_classifier import OnnxClassifier

OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
SCORE_DIGITS = 6
MAP_DIGITS = 4
TOP = "top"  # --explain without a label: each image's top class


def csv_fields(top_k: int) -> list[str]:
    """``path, label, score, label_2, score_2, ..., error`` for ``top_k`` classes."""
    ranked = [f"{name}_{i}" if i > 1 else name for i in range(1, top_k + 1) for name in ("label", "score")]
    return ["path", *ranked, "error"]


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record (:meth:`Prediction.to_dict`) as one flat CSV row."""
    row: dict[str, Any] = {"path": record.get("path", ""), "error": record.get("error", "")}
    for i, pred in enumerate(record.get("predictions", []), start=1):
        suffix = f"_{i}" if i > 1 else ""
        row["label" + suffix], row["score" + suffix] = pred["label"], pred["score"]
    return row


def check_output(output: Path) -> str | None:
    """Why ``output`` cannot be written (before any work is done), or ``None``."""
    if output.is_dir():
        return f"{output}: is a folder; give a file name such as {output / 'predictions.jsonl'}"
    if output.suffix.lower() not in OUTPUT_FORMATS:
        return (f"{output}: unknown output format {output.suffix or '(no extension)'!r}; "
                f"use {', '.join(OUTPUT_FORMATS)}")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{output}: cannot create it below {parent}, which is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{output}: cannot write to {parent} (permission denied)"
    return None


class RecordWriter:
    """JSON lines to a stream, or JSON lines / CSV to a file via a temporary file in the same
    folder and a rename; the file gets the mode of the file it replaces, else the umask's."""

    def __init__(self, output: Path | None, top_k: int) -> None:
        self.output = output
        self._tmp: str | None = None
        self._csv: csv.DictWriter | None = None
        if output is None:
            self.stream: IO[str] = sys.stdout
            self.format = "jsonl"
            return
        self.format = OUTPUT_FORMATS[output.suffix.lower()]
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        os.chmod(fd, file_mode(output))
        self.stream = os.fdopen(fd, "w", newline="" if self.format == "csv" else None, encoding="utf-8")
        if self.format == "csv":
            self._csv = csv.DictWriter(self.stream, csv_fields(top_k))
            self._csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(csv_row(record))
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
    p = parser("vit-predict", __doc__)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--model", type=Path, default=None,
                   help=f"exported .onnx file (default: the shipped {DEFAULT_CLASSIFIER.name})")
    p.add_argument("--top-k", type=int, default=5, help="classes per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per inference call")
    add_runtime_arguments(p)
    p.add_argument("-o", "--output", type=Path,
                   help="write records to a .jsonl or .csv file (default: JSON lines on stdout)")
    p.add_argument("--explain", nargs="?", const=TOP, default=None, metavar="LABEL",
                   help="add the class-specific map of the top class (or of LABEL) and the rollout map "
                        "to each record (JSON lines only)")
    return p


def _fail(message: str) -> int:
    print(f"vit-predict: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.top_k < 1 or args.batch_size < 1:
        return _fail("--top-k and --batch-size must be at least 1")
    if args.output is not None and (problem := check_output(args.output)):
        return _fail(problem)
    if args.explain is not None and args.output is not None and args.output.suffix.lower() == ".csv":
        return _fail(f"--explain: maps do not fit {args.output}'s CSV columns; write .jsonl instead")
    try:
        writer = RecordWriter(args.output, args.top_k)  # a folder that refuses files fails here, first
    except OSError as exc:
        return _fail(f"{args.output}: cannot write there ({exc.strerror or type(exc).__name__})")
    try:
        return _classify(args, writer)
    finally:
        writer.discard()


def _classify(args: argparse.Namespace, writer: RecordWriter) -> int:
    model = args.model
    if model is None:
        model = DEFAULT_CLASSIFIER
        if not model.is_file():
            return _fail(f"no model at {model}; train one with vit-train and export it with "
                         f"`vit-export CHECKPOINT -o {model}`, or pass --model FILE.onnx")
    if model.suffix.lower() in (".ckpt", ".safetensors", ".pt", ".pth"):
        return _fail(f"{model} is a training checkpoint; export it first with "
                     f"`vit-export {model} -o model.onnx`, then run vit-predict --model model.onnx")
    try:
        clf = OnnxClassifier(model, providers=args.provider, backend=args.backend, precision=args.precision)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    if args.explain not in (None, TOP) and args.explain not in clf.info.class_names:
        return _fail(f"--explain: {args.explain!r} is not one of {model.name}'s classes: "
                     f"{', '.join(clf.info.class_names)}")
    try:
        return _run(clf, args, writer)
    except BrokenPipeError:  # `vit-predict ... | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0


def _run(clf: OnnxClassifier, args: argparse.Namespace, writer: RecordWriter) -> int:
    from tqdm import tqdm

    start = time.perf_counter()
    skipped: list[Path] = []
    items = find_images(args.paths, skipped=skipped)
    failed = 0
    with tqdm(total=len(items), unit="img", file=sys.stderr, disable=not sys.stderr.isatty(),
              leave=False) as bar:
        for item, pred in zip(items, clf.predict_iter(items, args.top_k, batch_size=args.batch_size,
                                                      errors="record"), strict=True):
            failed += pred.error is not None
            record = pred.to_dict(digits=SCORE_DIGITS)
            if args.explain is not None and pred.error is None:
                record.update(explanation(clf, item, pred.labels[0] if args.explain == TOP else args.explain))
            writer.write(record)
            bar.update(1)
    writer.commit()
    seconds = time.perf_counter() - start
    print(summary(len(items), failed, len(skipped), seconds, args.output,
                  empty=all(isinstance(i, Missing) for i in items), runtime=clf.runtime), file=sys.stderr)
    return 1 if failed else 0


def explanation(clf: OnnxClassifier, image: Any, label: str) -> dict[str, Any]:
    """``class_map`` of ``label`` and ``rollout`` (where the file has attention) of one image,
    as nested lists (Gh, Gw) rounded to MAP_DIGITS, with what computed them."""
    pixels = clf.preprocess(image)  # (1, 3, H, W)
    method = clf.info.class_map_methods[0]
    class_map = clf.class_map(pixels[0], clf.info.class_names.index(label), method)  # (Gh, Gw)
    record: dict[str, Any] = {"class_map": {"label": label, "method": method,
                                            "values": np.round(class_map, MAP_DIGITS).tolist()}}
    if clf.rollout_method is not None:
        rollout = clf.rollout(pixels)[0]  # (Gh, Gw)
        record["rollout"] = {"method": clf.rollout_method, "values": np.round(rollout, MAP_DIGITS).tolist()}
    return record


def summary(count: int, failed: int, skipped: int, seconds: float, output: Path | None, *,
            empty: bool = False, runtime: str | None = None) -> str:
    """The last line of a run: what was done, how fast, on what and where it went."""
    done = count - failed
    rate = f", {done / seconds:.1f} img/s" if done and seconds > 0 else ""
    rate += f" on {runtime}" if runtime and done else ""
    parts = [f"{done} image{'s' if done != 1 else ''} classified", f"{failed} failed"]
    parts.append(f"{skipped} non-image file{'s' if skipped != 1 else ''} skipped")
    where = f"; wrote {output}" if output is not None else ""
    hint = "; nothing to classify" if empty else ""
    return f"vit-predict: {', '.join(parts)} in {seconds:.1f} s{rate}{where}{hint}"


if __name__ == "__main__":
    sys.exit(main())
