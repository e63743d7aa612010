"""benchmarks/edge_bias.py: the edge profile of a map, and occlusion that finds the rows a
model's answer really depends on (the test that tells used attention from a sink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GRID, PATCH, SIZE, load_benchmark, train_one_patch_vit
from PIL import Image

from vit.checkpoint import save_vit
from vit.preprocess import Preprocess

CLASS_NAMES = ["red", "blue", "none"]


def bottom_row_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dim noise with the class's red or blue patch somewhere in the bottom row of the grid."""
    x = rng.uniform(0.0, 0.5, (n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i, c in enumerate(rng.integers(0, GRID, n)):
        colour = np.array([1.0, 0.0, 0.0] if y[i] == 0 else [0.0, 0.0, 1.0], np.float32)[:, None, None]
        x[i, :, SIZE - PATCH:, c * PATCH:(c + 1) * PATCH] = colour
    return x, y


def test_profile_scales_to_a_uniform_map_and_reads_the_edges() -> None:
    bench = load_benchmark("edge_bias")
    grid_map = np.ones((4, 4))
    grid_map[-1] = 5.0  # the bottom row: 5x the others
    prof = bench.profile(grid_map)
    assert prof["bottom"] == pytest.approx(5 / 2) and prof["top"] == pytest.approx(1 / 2)
    assert prof["left"] == prof["right"] == pytest.approx((3 + 5) / 4 / 2)


def test_occlusion_finds_the_row_the_answer_uses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Evidence only in the bottom row: occlusion puts the bottom row far above the top one
    (and follows the evidence when the images are turned upside down); the command prints
    every map for a saved checkpoint and an image folder."""
    bench = load_benchmark("edge_bias")
    model = train_one_patch_vit(class_token=True)
    x, y = bottom_row_images(24, np.random.default_rng(3))
    maps = bench.attention_profiles(model, torch.from_numpy(x))
    assert set(maps) == {"layer 0", "last layer", "rollout", "contrib.", "occlusion"}
    assert maps["occlusion"]["bottom"] > 3 * maps["occlusion"]["top"]
    flipped = bench.attention_profiles(model, torch.from_numpy(x).flip(2), occlusion=True)
    assert flipped["occlusion"]["top"] > 3 * flipped["occlusion"]["bottom"]

    spec = Preprocess(crop_size=SIZE, resize_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    record = {"config": model.config.to_dict(), "class_names": CLASS_NAMES, "preprocess": spec.to_dict(),
              "val_acc": None, "source": "tests"}
    save_vit(model, record, tmp_path / "model.safetensors")
    for i, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
        folder = tmp_path / "data" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(folder / f"{i}.png")
    assert bench.main([str(tmp_path / "model.safetensors"), "--data", str(tmp_path / "data"),
                       "--split", "all", "--num-images", "24"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()]
    assert "24 images;" in printed and sum(r[:1] == ["occlusion"] for r in rows) == 2
    for row in ("images as they are", "images upside down", "images left-right", "pos 180", "pos zero"):
        assert row in printed
    assert torch.is_grad_enabled()  # the command leaves autograd as it found it
