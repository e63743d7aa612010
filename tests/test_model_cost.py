"""benchmarks/model_cost.py: parameters and FLOPs of each file's recorded architecture, its
serving times, ratios against the first file; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark

from export.metadata import read_metadata
from vit.vit import ViT, ViTConfig


def test_cost_table_of_two_files(tiny_onnx: Path, tiny_onnx_attention: Path, tiny_data: Path,
                                 capsys: pytest.CaptureFixture, one_thread: None) -> None:
    bench = load_benchmark("model_cost")
    assert bench.main([str(tiny_onnx), str(tiny_onnx_attention), "--images", str(tiny_data),
                       "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| " + str(tiny_onnx.parent.parent))]
    assert len(rows) == 2
    params = sum(p.numel() for p in ViT(ViTConfig(**read_metadata(tiny_onnx).config)).parameters())
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == f"{params:,}" and float(cells[3]) > 0
    assert cells[-2:] == ["1.00x", "1.00x"]  # the first file is the reference
    second = [c.strip() for c in rows[1].strip("|").split("|")]
    assert second[2] == cells[2] and second[3] == cells[3]  # same architecture, attention output or not


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark("model_cost")
    assert bench.main([str(tmp_path / "nope.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"model_cost: {tmp_path / 'nope.onnx'}: no such file"
