"""benchmarks/inference.py: it runs on any exported file (here the tiny one, no weights beside
it, so no PyTorch rows), puts our auto choice on top, OpenVINO bf16 as the peer of every ratio,
and reports the issue's targets."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_benchmark

from export.backends import availability


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("inference")


def test_table_on_an_exported_file(bench, tiny_onnx: Path, tiny_data: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture, one_thread: None) -> None:
    if "bf16" not in availability()[0].get("openvino", ()):
        pytest.skip("the peer, OpenVINO bf16, needs a CPU with bf16")
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(tiny_onnx), "--images", str(tiny_data), "--num-images", "8",
                       "--rounds", "1", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no PyTorch rows: no checkpoint given or found beside the model" in text
    table = [line for line in text.splitlines() if line.startswith("| ours (auto: ")]
    assert len(table) == 1 and "| 1.00x |" in next(line for line in text.splitlines()
                                                   if line.startswith("| OpenVINO bf16 |"))
    assert "| ours: OnnxClassifier.predict |" in text
    assert "targets at 1 thread(s): model b1 vs OV bf16" in text
    result = json.loads(out.read_text())["results"][0]
    assert list(result["rows"])[:4] == [result["ours"], "OpenVINO fp32", "OpenVINO bf16", "onnxruntime fp32"]
    assert all(row["top1_agreement"] >= 0.75 for row in result["rows"].values())
