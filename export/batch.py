"""Batch inference beyond one machine: :class:`~export.onnx_classifier.OnnxClassifier` over a
large image set on Ray Data, with throughput per worker.

    python -m export.batch --model models/cifar10_vit.onnx photos/ -o out.jsonl --workers 4

:class:`BatchClassifier` is a callable class for ``Dataset.map_batches``: each worker (a Ray
actor) builds it once from the model, then turns batches of a ``path`` column (and, when Ray
read the files, a ``bytes`` column) into ``vit-predict``'s flat columns ``path, label, score,
label_2, score_2, ..., error``, plus ``worker`` and ``seconds`` for throughput. An unreadable
image becomes a row with ``error`` set, never a failed job. The class itself needs no Ray.

:func:`classify` runs a whole job: local files, folders and globs (each worker opens the files,
so a cluster needs them on a shared filesystem) or URIs such as ``s3://bucket/images/`` (Ray
reads the bytes); a fixed pool of workers; records written as ``vit-predict`` writes them, in
input order, to stdout or atomically to a .jsonl/.csv file; a :class:`BatchReport` with images,
busy seconds and img/s per worker. :func:`predict_dataset` is the lazy step alone, for datasets
built and written with Ray's own readers and writers.

Ray is an optional extra (``pip install "vit-service[ray]"``), imported only when a job runs.
Torch-free.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vit.command import parser
from vit.image_folder import IMAGE_EXTENSIONS
from vit.paths import DEFAULT_CLASSIFIER

from .backends import add_runtime_arguments
from .images import ImageLoadError, Missing, decode_image, find_images, load_image
from .onnx_classifier import OnnxClassifier
from .predict import SCORE_DIGITS, RecordWriter, check_output, csv_fields, csv_row

if TYPE_CHECKING:
    import ray.data

PROG = "python -m export.batch"
RAY_MISSING = ('Ray Data is not installed; install the extra: pip install "vit-service[ray]" '
               '(in a checkout: pip install -e ".[ray]")')
STATS_COLUMNS = ("worker", "seconds")

logger = logging.getLogger(__name__)


def require_ray() -> ModuleType:
    """``ray`` with ``ray.data`` loaded, or one :class:`ModuleNotFoundError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray.data is a subpackage the caller uses as ray.data)
    except ImportError as exc:
        raise ModuleNotFoundError(RAY_MISSING) from exc
    return ray


def output_columns(top_k: int) -> list[str]:
    """What :class:`BatchClassifier` returns: ``path, label, score, ..., error, worker, seconds``."""
    return [*csv_fields(top_k), *STATS_COLUMNS]


class BatchClassifier:
    """A callable for ``Dataset.map_batches(BatchClassifier, fn_constructor_kwargs=...)``.

    ``model`` is an .onnx path or the file's bytes (shipped to workers that do not share a
    filesystem with the driver); ``threads`` caps the runtime's threads in this worker;
    ``options`` (``backend``, ``precision``, ...) go to :class:`OnnxClassifier` unchanged.
    """

    def __init__(self, model: str | Path | bytes, *, top_k: int = 5, threads: int = 1,
                 providers: str | Sequence[str] | None = None, **options: Any) -> None:
        if top_k < 1 or threads < 1:
            raise ValueError(f"top_k and threads must be at least 1, got {top_k} and {threads}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if isinstance(model, bytes):
            self._tmp = tempfile.TemporaryDirectory(prefix="vit-batch-")  # removed with the worker
            path = Path(self._tmp.name) / "model.onnx"
            path.write_bytes(model)
            model = path
        self.classifier = OnnxClassifier(model, providers, intra_op_threads=threads, **options)
        self.top_k = top_k
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # one process per Ray actor

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"path": (B,), "bytes": (B,) optional}`` -> one row per input, in order: the
        prediction columns, ``worker`` (host:pid) and ``seconds`` (this row's share of the
        batch's time: decoding, preprocessing and inference)."""
        start = time.perf_counter()
        if "path" not in batch:
            got = ", ".join(batch)
            raise ValueError(f"a batch needs a 'path' column (and optionally 'bytes'); got {got}")
        paths = [str(p) for p in batch["path"]]
        data = batch.get("bytes")
        images, failed = [], {}
        for i, path in enumerate(paths):
            try:
                images.append(load_image(path) if data is None else decode_image(bytes(data[i]), path))
            except ImageLoadError as exc:
                failed[i] = str(exc)
        preds = iter(self.classifier.predict(images, self.top_k, batch_size=max(1, len(images)),
                                             errors="record") if images else [])
        rows = []
        for i, path in enumerate(paths):
            if i in failed:
                rows.append(csv_row({"path": path, "error": failed[i]}))
                continue
            pred = next(preds)
            pred.path = path
            rows.append(csv_row(pred.to_dict()))
        share = (time.perf_counter() - start) / max(1, len(paths))
        out: dict[str, np.ndarray] = {}
        for name in csv_fields(self.top_k):
            if name.startswith("score"):
                out[name] = np.array([float(r.get(name, np.nan)) for r in rows], dtype=np.float64)
            else:
                out[name] = np.array([str(r.get(name, "")) for r in rows], dtype=object)
        out["worker"] = np.array([self.worker] * len(rows), dtype=object)
        out["seconds"] = np.full(len(rows), share, dtype=np.float64)
        return out


def row_record(row: Mapping[str, Any], top_k: int, digits: int | None = SCORE_DIGITS) -> dict[str, Any]:
    """A row of :class:`BatchClassifier`'s columns as the project's record,
    ``{"path", "predictions": [{"label", "score"}, ...]}`` or ``{"path", "error"}``."""
    if row.get("error"):
        return {"path": str(row["path"]), "error": str(row["error"])}
    predictions = []
    for i in range(1, top_k + 1):
        suffix = f"_{i}" if i > 1 else ""
        label = str(row.get("label" + suffix, ""))
        if not label:  # fewer classes than top_k
            break
        score = float(row["score" + suffix])
        predictions.append({"label": label, "score": score if digits is None else round(score, digits)})
    return {"path": str(row["path"]), "predictions": predictions}


@dataclass
class WorkerStats:
    """What one worker did: images (failed included), failures, and seconds spent on them."""

    worker: str
    images: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"worker {self.worker}: {self.images} images ({self.failed} failed) in "
                f"{self.seconds:.1f} s busy, {self.rate:.1f} img/s")


@dataclass
class BatchReport:
    """A finished job: every record counted once; ``seconds`` is wall time on the driver,
    workers' start and model loading included."""

    images: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    output: Path | None = None

    def add(self, row: Mapping[str, Any]) -> None:
        failed = bool(row.get("error"))
        self.images += 1
        self.failed += failed
        stats = self.workers.setdefault(str(row["worker"]), WorkerStats(str(row["worker"])))
        stats.images += 1
        stats.failed += failed
        stats.seconds += float(row["seconds"])

    def lines(self) -> list[str]:
        """Per worker, then the total (the lines ``python -m export.batch`` prints)."""
        done = self.images - self.failed
        rate = f", {self.images / self.seconds:.1f} img/s overall" if self.images and self.seconds > 0 else ""
        where = f"; wrote {self.output}" if self.output is not None else ""
        total = (f"{done} image{'s' if done != 1 else ''} classified, {self.failed} failed in "
                 f"{self.seconds:.1f} s on {len(self.workers)} worker{'s' if len(self.workers) != 1 else ''}"
                 f"{rate}{where}")
        return [s.line() for s in sorted(self.workers.values(), key=lambda s: s.worker)] + [total]


def is_uri(arg: str | Path) -> bool:
    return "://" in str(arg)


def image_dataset(args: Sequence[str | Path]) -> tuple[ray.data.Dataset | None, list[Missing]]:
    """A dataset of the images that ``args`` name, and the arguments that named none.

    Local files, folders and globs are expanded here as ``vit-predict`` expands them, into a
    ``path`` column that workers open; URIs go to ``ray.data.read_binary_files`` (``path`` and
    ``bytes``, image extensions only). One kind per job: the two have different columns.
    """
    ray = require_ray()
    uris = [str(a) for a in args if is_uri(a)]
    if uris and len(uris) != len(args):
        raise ValueError("give either local paths or URIs (s3://, gs://, file://), not both")
    if uris:
        extensions = sorted({e.lstrip(".") for x in IMAGE_EXTENSIONS for e in (x, x.upper())})
        return ray.data.read_binary_files(uris, include_paths=True, file_extensions=extensions), []
    found = find_images(args)
    missing = [f for f in found if isinstance(f, Missing)]
    files = [{"path": str(f)} for f in found if not isinstance(f, Missing)]
    return (ray.data.from_items(files) if files else None), missing


def predict_dataset(ds: ray.data.Dataset, model: str | Path, *, workers: int = 2, threads: int = 1,
                    top_k: int = 5, batch_size: int = 32, providers: str | Sequence[str] | None = None,
                    ship_model: bool = True, **options: Any) -> ray.data.Dataset:
    """``ds`` (``path``, optionally ``bytes``) mapped by a pool of ``workers`` actors of
    :class:`BatchClassifier`, each using ``threads`` CPUs; lazy, like every Ray Data step.
    The model file's bytes travel with the job (``ship_model``), so workers on other machines
    need no copy of it; ``ship_model=False`` has them open it at its absolute path instead."""
    ray = require_ray()
    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    model = Path(model).resolve()
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no such ONNX model file")
    source = model.read_bytes() if ship_model else str(model)
    kwargs = dict(model=source, top_k=top_k, threads=threads, providers=providers, **options)
    return ds.map_batches(BatchClassifier, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                          num_cpus=threads)


def resource_problem(cpus: float, workers: int, threads: int, *, reads: bool) -> str | None:
    """Why a job of ``workers`` x ``threads`` CPUs (plus one for Ray's read tasks when it reads
    URIs) would wait on a cluster of ``cpus`` CPUs, or ``None``."""
    needed = workers * threads + (1 if reads else 0)
    if needed <= cpus:
        return None
    readers = " + 1 for Ray's readers" if reads else ""
    return (f"{workers} worker{'s' if workers != 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
            f"{readers} need {needed} CPUs and the Ray cluster has {cpus:g}: the job waits until it grows "
            "(use fewer --workers or --threads)")


def classify(args: Sequence[str | Path], model: str | Path, output: Path | None = None, *,
             workers: int = 2, threads: int = 1, top_k: int = 5, batch_size: int = 32,
             providers: str | Sequence[str] | None = None, **options: Any) -> BatchReport:
    """Classify every image ``args`` name on Ray (a running cluster, or a local one Ray starts)
    and write one record per image, in input order (arguments that named no image first), to
    ``output`` (.jsonl or .csv, via a temporary file and a rename) or to stdout."""
    ray = require_ray()
    start = time.perf_counter()
    report = BatchReport(output=output)
    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # records in input order; set before the dataset
    writer: RecordWriter | None = None               # exists, as a dataset keeps its context
    try:
        ds, missing = image_dataset(args)
        writer = RecordWriter(output, top_k)
        for item in missing:
            writer.write({"path": item.arg, "error": item.message})
            report.images += 1
            report.failed += 1
        if ds is not None:
            cpus = ray.cluster_resources().get("CPU", 0)
            if problem := resource_problem(cpus, workers, threads, reads=any(is_uri(a) for a in args)):
                logger.warning(problem)
            mapped = predict_dataset(ds, model, workers=workers, threads=threads, top_k=top_k,
                                     batch_size=batch_size, providers=providers, **options)
            for batch in mapped.iter_batches(batch_size=batch_size, batch_format="numpy"):
                columns = list(batch)
                for values in zip(*(batch[c] for c in columns), strict=True):
                    row = dict(zip(columns, values, strict=True))
                    report.add(row)
                    writer.write(row_record(row, top_k))
        writer.commit()
    finally:
        context.execution_options.preserve_order = preserve
        if writer is not None:
            writer.discard()
    report.seconds = time.perf_counter() - start
    return report


def _parser() -> argparse.ArgumentParser:
    p = parser(PROG, __doc__)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files, folders or glob patterns, or URIs (s3://..., gs://..., file://...)")
    p.add_argument("--model", type=Path, default=None,
                   help=f"exported .onnx file (default: the shipped {DEFAULT_CLASSIFIER.name})")
    p.add_argument("-o", "--output", type=Path,
                   help="write records to a .jsonl or .csv file (default: JSON lines on stdout)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, each with its own copy of the model")
    p.add_argument("--threads", type=int, default=1, help="CPUs (onnxruntime threads) per worker")
    p.add_argument("--top-k", type=int, default=5, help="classes per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per inference call")
    add_runtime_arguments(p)  # auto is chosen on each worker
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto: the one `ray start` runs here); "
                        "default: a local Ray with workers x threads + 1 CPUs")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if min(args.workers, args.threads, args.top_k, args.batch_size) < 1:
        return _fail("--workers, --threads, --top-k and --batch-size must be at least 1")
    model = args.model or DEFAULT_CLASSIFIER
    options = dict(providers=args.provider, backend=args.backend, precision=args.precision)
    try:
        OnnxClassifier(model, **options)  # a bad file or backend: one line here, not a trace per worker
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    if args.output is not None and (problem := check_output(args.output)):
        return _fail(problem)
    try:
        ray = require_ray()
    except ModuleNotFoundError as exc:
        return _fail(str(exc))
    if not sys.stderr.isatty():  # a log file gets the summary, not a progress line per second
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    started = not ray.is_initialized()
    if started:
        cpus = None if args.address else args.workers * args.threads + 1  # + 1 for Ray's readers
        ray.init(address=args.address, num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        report = classify(args.paths, model, args.output, workers=args.workers, threads=args.threads,
                          top_k=args.top_k, batch_size=args.batch_size, **options)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    finally:
        if started:
            ray.shutdown()
    for line in report.lines():
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
