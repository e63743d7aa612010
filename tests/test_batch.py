"""export.batch: the map_batches callable agrees with OnnxClassifier.predict on images read
from files or from bytes, an unreadable image is an error row, and a job on a local Ray
(2 CPUs, 2 workers) writes the same records as OnnxClassifier.predict, in input order, with
throughput per worker; importing the module needs neither Ray nor torch."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, photo, run_cli

from export.batch import (
    BatchClassifier,
    BatchReport,
    classify,
    main,
    output_columns,
    require_ray,
    resource_problem,
    row_record,
)
from export.onnx_classifier import OnnxClassifier
from export.predict import SCORE_DIGITS
from vit.paths import DEFAULT_CLASSIFIER

MODEL = DEFAULT_CLASSIFIER  # the shipped CIFAR-10 ViT
PHOTO = REPO / "demo" / "examples" / "chelsea_cat.jpg"  # a real photo in the repository
BAD = {"empty.png": b"", "notes.jpg": b"this is not a picture\n"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 pictures of different sizes and formats (the repository's photo among them) and three
    unreadable files."""
    root = tmp_path_factory.mktemp("batch") / "images"
    root.mkdir()
    shutil.copy(PHOTO, root / "cat.jpg")
    for i in range(29):
        photo((24 + 5 * i, 40 - i % 7), seed=i).save(root / f"photo_{i:02d}.{'jpg' if i % 2 else 'png'}")
    for name, data in BAD.items():
        (root / name).write_bytes(data)
    (root / "truncated.jpg").write_bytes(PHOTO.read_bytes()[:300])
    return root


@pytest.fixture(scope="module")
def expected(folder: Path) -> list[dict]:
    """What OnnxClassifier.predict says about every file in ``folder``, in its order."""
    return [p.to_dict(SCORE_DIGITS) for p in OnnxClassifier(MODEL).predict([folder], 3, errors="record")]


def same(records: list[dict], expected: list[dict]) -> None:
    assert [r["path"] for r in records] == [e["path"] for e in expected]
    for got, want in zip(records, expected, strict=True):
        assert ("error" in got) == ("error" in want), got
        if "error" in want:
            assert got["error"].startswith(want["path"]), got
            continue
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                   [p["score"] for p in want["predictions"]], atol=2e-6)


def test_importing_it_loads_neither_ray_nor_torch() -> None:
    code = "import sys, export.batch; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_ray_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r'pip install "vit-service\[ray\]"'):
        require_ray()
    run = run_cli(main, ["--model", str(MODEL), str(folder)])
    assert run.status == 2 and run.out == ""
    assert run.err.count("\n") == 1 and 'vit-service[ray]' in run.err


@pytest.mark.parametrize("source", ["path", "bytes"])
def test_the_callable_agrees_with_predict(folder: Path, expected: list[dict], source: str) -> None:
    """Files opened by the worker, or bytes Ray read (and the model shipped as bytes)."""
    paths = [e["path"] for e in expected]
    batch = {"path": np.array(paths, dtype=object)}
    if source == "bytes":
        batch["bytes"] = np.array([Path(p).read_bytes() for p in paths], dtype=object)
    model = MODEL.read_bytes() if source == "bytes" else MODEL
    out = BatchClassifier(model, top_k=3)(batch)
    assert list(out) == output_columns(3) and all(len(v) == len(paths) for v in out.values())
    rows = [{name: out[name][i] for name in out} for i in range(len(paths))]
    same([row_record(r, 3) for r in rows], expected)
    assert sum(bool(r["error"]) for r in rows) == 3 and all(np.isnan(r["score"]) for r in rows if r["error"])
    assert len(set(out["worker"])) == 1 and (out["seconds"] > 0).all()


def test_a_batch_without_paths_is_refused() -> None:
    with pytest.raises(ValueError, match="'path' column"):
        BatchClassifier(MODEL)({"bytes": np.array([b""], dtype=object)})


def test_the_report_counts_per_worker() -> None:
    report = BatchReport(seconds=2.0)
    for worker, error, seconds in [("a:1", "", 0.5), ("a:1", "x: bad", 0.5), ("b:2", "", 0.25)]:
        report.add({"worker": worker, "error": error, "seconds": seconds})
    assert (report.images, report.failed) == (3, 1)
    assert report.lines() == [
        "worker a:1: 2 images (1 failed) in 1.0 s busy, 2.0 img/s",
        "worker b:2: 1 images (0 failed) in 0.2 s busy, 4.0 img/s",
        "2 images classified, 1 failed in 2.0 s on 2 workers, 1.5 img/s overall",
    ]


def test_a_job_that_cannot_start_all_its_workers_is_named() -> None:
    assert resource_problem(2, 2, 1, reads=False) is None
    assert resource_problem(2, 2, 1, reads=True) == (
        "2 workers x 1 thread + 1 for Ray's readers need 3 CPUs and the Ray cluster has 2: the job waits "
        "until it grows (use fewer --workers or --threads)")


# --------------------------------------------------------------------------- on a local Ray
@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray with 2 CPUs for this module, shut down (all its processes) afterwards."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.timeout(120)  # a stalled Ray job fails here instead of holding CI for 10 minutes
def test_a_ray_job_writes_what_predict_says(local_ray: None, folder: Path, expected: list[dict],
                                            tmp_path: Path) -> None:
    out = tmp_path / "out" / "predictions.jsonl"
    nothing = str(folder / "nothing-*.png")
    report = classify([folder, nothing], MODEL, out, workers=2, top_k=3, batch_size=2)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0] == {"path": nothing, "error": f"{nothing}: no such file or directory, "
                                                    "and no file matches it as a pattern"}
    same(records[1:], expected)  # the same records, in input order
    assert (report.images, report.failed) == (len(expected) + 1, 4)
    assert 1 <= len(report.workers) <= 2 and sum(w.images for w in report.workers.values()) == len(expected)
    assert all(w.rate > 0 for w in report.workers.values())
    assert [p.name for p in out.parent.iterdir()] == ["predictions.jsonl"]  # no temporary file left


@pytest.mark.timeout(120)
def test_the_command_reads_uris_and_reports_its_worker(local_ray: None, folder: Path, expected: list[dict],
                                                       tmp_path: Path) -> None:
    """A file:// URI: Ray reads the bytes, as it would from s3:// or gs://; its read tasks need a
    CPU that the workers leave free (1 worker of 1 thread on this 2-CPU Ray)."""
    out = tmp_path / "predictions.csv"
    run = run_cli(main, ["--model", str(MODEL), folder.as_uri(), "-o", str(out), "--workers", "1",
                         "--batch-size", "4", "--top-k", "3"])
    assert run.status == 1, run.err  # three files failed
    with out.open(newline="") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    for want in expected:
        row = rows[want["path"]]
        if "error" in want:
            assert row["error"].startswith(want["path"]) and row["label"] == ""
        else:
            assert row["error"] == "" and row["label_3"] == want["predictions"][2]["label"]
    lines = [line for line in run.err.splitlines() if line.startswith("python -m export.batch: ")]
    assert lines[-1].startswith(f"python -m export.batch: {len(expected) - 3} images classified, 3 failed")
    assert sum(" img/s" in line and ": worker " in line for line in lines) == 1
