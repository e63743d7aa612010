"""The parity gate: which backend and precision may serve a file by default.

Every backend/precision this machine runs (:func:`export.backends.availability`) is run on
real images and compared with the reference, onnxruntime fp32 (the runtime ``vit-export``
verifies against PyTorch). A combination passes when, on those images,

- top-1 agrees with the reference on >= 99.5% of them,
- accuracy (labels from folder names that are the model's classes) moves by <= 0.2 points (or
  one image, where fewer than 500 are labelled: the finest change they can show),
- for files with an ``attention`` output: no attention weight moves by more than 0.15 and
  the rollout maps the demo draws (attention rollout, and contribution rollout where the
  file has ``contributions``) stay within 5% of their peak value
  (:class:`GateTolerance`; bf16 keeps 8 bits of mantissa, so where attention is sharp a
  single softmax weight moves by up to ~0.1 while the rollout moves ~2%); with a
  ``token_logits`` output (class maps from the file) those move by at most 5% of their
  largest value too.

The verdicts go into the file's metadata as ``vit.gate`` (:func:`write_gate`: a temporary
file in the same folder, then a rename; the graph is untouched), where
:func:`export.backends.choose` reads them: a reduced precision is used by ``auto`` only
where it passed. ``vit-export --verify-images DIR`` gates what it exports; an exported file
is gated without torch by

    python -m export.gate model.onnx --images DIR [--num-images 1000] [--threads 1]

Shape letters: B batch, K classes, L layers, H heads, N tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vit.command import file_mode, parser
from vit.image_folder import labeled_images
from vit.preprocess import Preprocess, preprocess_image
from vit.rollout import attention_rollout, contribution_rollout

from .backends import OpenVinoRunner, OrtRunner, availability, choose, openvino_device_name, verdicts
from .images import ImageLoadError, load_image
from .metadata import PREFIX, ModelMetadata, read_metadata

logger = logging.getLogger(__name__)

REFERENCE = ("onnxruntime", "fp32")
GATE_KEY = PREFIX + "gate"
BATCH_SIZES = (1, 3, 64)  # cycled through, so that every backend sees a dynamic batch


@dataclass(frozen=True)
class GateTolerance:
    """Pass criteria against the reference (fractions, not percent)."""

    min_top1_agreement: float = 0.995
    max_accuracy_change: float = 0.002  # or one image, on fewer than 500 labelled images
    attention_atol: float = 0.15
    rollout_rtol: float = 0.05
    token_logits_rtol: float = 0.05


TOLERANCE = GateTolerance()


@dataclass
class GateResult:
    """One backend/precision against the reference on the gate's images."""

    backend: str
    precision: str
    count: int
    top1_agreement: float
    max_logit_diff: float | None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    attention_diff: float | None = None
    rollout_diff: float | None = None
    token_logits_diff: float | None = None  # relative to the reference's largest value
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> GateResult:
        return cls(**{k: v for k, v in record.items() if k != "passed"})


def load_images(folder: Path, meta: ModelMetadata, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` images spread evenly over ``folder`` (ImageFolder or flat),
    preprocessed as in validation; labels are indices into the model's classes, -1 if the
    folder's class is not one of them."""
    paths, names = labeled_images(folder)
    if not paths:
        raise ValueError(f"{folder}: no image files to verify with")
    keep = np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int))
    spec = Preprocess(**meta.preprocess)
    index = {name: i for i, name in enumerate(meta.class_names)}
    arrays, labels = [], []
    for i in keep:
        try:
            arrays.append(preprocess_image(load_image(paths[i]), spec))
        except ImageLoadError as exc:
            logger.warning("skipping %s", exc)
            continue
        labels.append(index.get(names[i], -1) if names else -1)
    if not arrays:
        raise ValueError(f"{folder}: none of the sampled images could be read")
    return np.stack(arrays), np.asarray(labels)


def candidates(variant: str = "fp32") -> list[tuple[str, str]]:
    """Every backend/precision this machine runs for a file, the reference excluded."""
    available, _ = availability(variant=variant)
    return [(b, p) for b, ps in available.items() for p in ps if (b, p) != REFERENCE]


def over_limits(checks: Sequence[tuple[str, float | None, float]]) -> list[str]:
    """``"<what> <value> > <limit>"`` for each (what, value, limit) whose value is above its
    limit; NaN is above every limit, None (not measured) above none. Shared by the gate and
    the export-time check (:mod:`export.verify`), so that both word a failure alike."""
    return [f"{what} {value:.2e} > {limit:.2e}" for what, value, limit in checks
            if value is not None and not value <= limit]


class _Tally:
    """Running comparison of one backend with the reference, batch by batch."""

    def __init__(self) -> None:
        self.logit_diff = 0.0
        self.top1: list[np.ndarray] = []
        self.attention_diff: float | None = None
        self.rollout_diff, self.rollout_peak = 0.0, 0.0
        self.shares_diff: float | None = None
        self.shares_peak = 0.0

    def add(self, got: dict[str, np.ndarray], want: dict[str, np.ndarray], rollouts: Any) -> None:
        """``rollouts``: outputs -> the rollout maps (B, Gh, Gw) the demo draws from them."""
        self.logit_diff = max(self.logit_diff, float(np.abs(got["logits"] - want["logits"]).max()))
        self.top1.append(got["logits"].argmax(1))
        if "attention" in want:
            diff = float(np.abs(got["attention"] - want["attention"]).max())
            self.attention_diff = max(self.attention_diff or 0.0, diff)
            for ours, theirs in zip(rollouts(got), rollouts(want), strict=True):  # (B, Gh, Gw) each
                self.rollout_diff = max(self.rollout_diff, float(np.abs(ours - theirs).max()))
                self.rollout_peak = max(self.rollout_peak, float(np.abs(theirs).max()))
        if "token_logits" in want:  # (B, Gh*Gw, K)
            diff = float(np.abs(got["token_logits"] - want["token_logits"]).max())
            self.shares_diff = max(self.shares_diff or 0.0, diff)
            self.shares_peak = max(self.shares_peak, float(np.abs(want["token_logits"]).max()))


def run_gate(path: str | Path, inputs: np.ndarray, labels: np.ndarray | None = None, *,
             threads: int | None = 1, combos: Sequence[tuple[str, str]] | None = None,
             tolerance: GateTolerance = TOLERANCE, images: str = "images") -> dict[str, Any]:
    """Gate the file at ``path`` on preprocessed ``inputs`` (B, 3, H, W); returns the
    ``vit.gate`` record (:func:`write_gate` stores it). ``combos``: what to gate (default:
    :func:`candidates`); ``images``: how to name the image set in the record."""
    meta = read_metadata(path)
    combos = list(combos) if combos is not None else candidates(meta.variant)
    outputs = list(meta.outputs)
    reference = OrtRunner(path, ["CPUExecutionProvider"], threads=threads)
    runners, unloadable = {}, []
    for backend, precision in combos:
        try:
            if backend == "openvino":
                runners[(backend, precision)] = OpenVinoRunner(path, precision=precision, threads=threads)
            else:
                runners[(backend, precision)] = OrtRunner(path, ["CPUExecutionProvider"], precision=precision,
                                                          threads=threads)
        except ValueError as exc:  # e.g. onnxruntime's fused operators in OpenVINO
            unloadable.append(GateResult(backend, precision, 0, 0.0, None, failures=[str(exc)]))
    pool = meta.config.get("global_pool", "token")
    grid = (int(meta.grid_size[0]), int(meta.grid_size[1]))
    layout = dict(num_prefix_tokens=meta.num_prefix_tokens, grid=grid, pool=pool)

    def rollouts(out: dict[str, np.ndarray]) -> list[np.ndarray]:
        maps = [attention_rollout(out["attention"], **layout)]
        if "contributions" in out:
            maps.append(contribution_rollout(out["contributions"], out.get("token_logits"), **layout))
        return maps

    tallies = {combo: _Tally() for combo in runners}
    reference_top1 = []
    start, i = 0, 0
    while start < len(inputs):
        x = inputs[start:start + BATCH_SIZES[min(i, len(BATCH_SIZES) - 1)]]
        want = reference.run(x, outputs)
        reference_top1.append(want["logits"].argmax(1))
        for combo, runner in runners.items():
            tallies[combo].add(runner.run(x, outputs), want, rollouts)
        start, i = start + len(x), i + 1
    ref_top1 = np.concatenate(reference_top1)
    known = labels >= 0 if labels is not None else np.zeros(len(inputs), bool)
    ref_acc = float((ref_top1 == labels)[known].mean()) if known.any() else None
    results = [_verdict(combo, tally, ref_top1, labels, known, ref_acc, tolerance)
               for combo, tally in tallies.items()] + unloadable
    return {
        "reference": " ".join(REFERENCE), "images": images, "count": len(inputs), "labeled": int(known.sum()),
        "reference_accuracy": ref_acc, "tolerance": asdict(tolerance), "device": _device_name(),
        "versions": {r.backend: r.version for r in (reference, *runners.values())},
        "gated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "results": [r.to_dict() for r in results],
    }


def _verdict(combo: tuple[str, str], tally: _Tally, ref_top1: np.ndarray, labels: np.ndarray | None,
             known: np.ndarray, ref_acc: float | None, tolerance: GateTolerance) -> GateResult:
    top1 = np.concatenate(tally.top1)
    result = GateResult(*combo, count=len(top1), top1_agreement=float((top1 == ref_top1).mean()),
                        max_logit_diff=tally.logit_diff, reference_accuracy=ref_acc)
    if result.top1_agreement < tolerance.min_top1_agreement:
        result.failures.append(f"top-1 agrees on {result.top1_agreement:.2%} < "
                               f"{tolerance.min_top1_agreement:.1%}")
    if ref_acc is not None and labels is not None:
        result.accuracy = float((top1 == labels)[known].mean())
        change = abs(result.accuracy - ref_acc)
        # accuracy on n images moves in steps of 1/n: one image is the finest change it can show
        allowed = max(tolerance.max_accuracy_change, 1.0 / int(known.sum()))
        if change > allowed + 1e-12:
            result.failures.append(f"accuracy {result.accuracy:.2%} vs {ref_acc:.2%} (more than "
                                   f"{allowed * 100:.2f} points)")
    if tally.attention_diff is not None:
        result.attention_diff = tally.attention_diff
        result.rollout_diff = tally.rollout_diff / max(tally.rollout_peak, 1e-12)
    if tally.shares_diff is not None:
        result.token_logits_diff = tally.shares_diff / max(tally.shares_peak, 1e-12)
    result.failures += over_limits([
        ("attention difference", result.attention_diff, tolerance.attention_atol),
        ("relative rollout difference", result.rollout_diff, tolerance.rollout_rtol),
        ("relative token_logits difference", result.token_logits_diff, tolerance.token_logits_rtol),
    ])
    if not np.isfinite(tally.logit_diff):
        result.failures.append("non-finite logits")
    return result


def _device_name() -> str:
    import platform

    try:
        return openvino_device_name()
    except ImportError:
        return platform.processor() or platform.machine()


def format_gate(record: dict[str, Any], choice: str | None = None) -> str:
    """The record as a short table (what ``vit-export`` and ``python -m export.gate`` print)."""
    acc = record.get("reference_accuracy")
    lines = [f"parity gate on {record['count']} {record['images']} against {record['reference']}"
             + (f" (accuracy {acc:.2%})" if acc is not None else "") + ":",
             f"  {'backend':<12} {'precision':<9} {'top-1 agree':>11} {'accuracy':>9} {'max|dlogit|':>11} "
             f"{'max|dattn|':>10} {'rollout':>8} {'classes':>8}  verdict"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for r in record["results"]:
        verdict = "passed" if r["passed"] else "FAILED: " + "; ".join(r["failures"])
        lines.append(f"  {r['backend']:<12} {r['precision']:<9} {r['top1_agreement']:>11.2%} "
                     f"{fmt(r['accuracy'], '.2%'):>9} {fmt(r['max_logit_diff'], '.1e'):>11} "
                     f"{fmt(r['attention_diff'], '.1e'):>10} {fmt(r['rollout_diff'], '.1e'):>8} "
                     f"{fmt(r.get('token_logits_diff'), '.1e'):>8}  {verdict}")
    if choice:
        lines.append(f"  auto serves this file with {choice} on this machine")
    return "\n".join(lines)


def write_gate(path: str | Path, record: dict[str, Any]) -> None:
    """Store ``record`` as the file's ``vit.gate`` metadata: the model is rewritten to a
    temporary file in the same folder (same permissions) and renamed over ``path``, so a
    reader never sees half a file. Nothing else in the file changes."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[GATE_KEY] = json.dumps(record)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        onnx.save(model, tmp)
        os.chmod(tmp, file_mode(path))
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parser() -> argparse.ArgumentParser:
    p = parser("python -m export.gate", __doc__)
    p.add_argument("model", type=Path, help="exported .onnx file (its vit.gate metadata is rewritten)")
    p.add_argument("--images", type=Path, required=True,
                   help="image folder (ImageFolder: accuracy from folder names that are the model's classes)")
    p.add_argument("--num-images", type=int, default=1000, help="images spread evenly over the folder")
    p.add_argument("--threads", type=int, default=1, help="threads per backend")
    p.add_argument("--dry-run", action="store_true", help="print the table, leave the file as it is")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.num_images < 1 or args.threads < 1:
            raise ValueError("--num-images and --threads must be at least 1")
        meta = read_metadata(args.model)
        x, labels = load_images(args.images, meta, args.num_images)
        record = run_gate(args.model, x, labels, threads=args.threads, images=f"images from {args.images}")
    except (OSError, ValueError) as exc:
        print(f"export.gate: {exc}", file=sys.stderr)
        return 2
    available, missing = availability(variant=meta.variant)
    pick = choose("auto", "auto", available=available, missing=missing, passed=verdicts(record),
                  where=str(args.model))
    print(format_gate(record, f"{pick.backend} {pick.precision}"))
    if not args.dry_run:
        write_gate(args.model, record)
        print(f"wrote the gate record into {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
