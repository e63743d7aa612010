"""benchmarks/faithfulness.py: on images whose class is decided by one patch, deleting
patches in the order of a faithful map destroys the prediction faster than a random order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPO, one_patch_images, train_one_patch_vit
from PIL import Image

from vit.checkpoint import save_vit
from vit.preprocess import Preprocess

BENCHMARK = REPO / "benchmarks" / "faithfulness.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("faithfulness", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_area_under_curve() -> None:
    bench = load_benchmark()
    np.testing.assert_allclose(bench.area_under(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), [1.0, 0.25])


def test_deletion_ranks_faithful_maps_above_random(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark()
    model = train_one_patch_vit(class_token=True)
    spec = Preprocess(crop_size=16, resize_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    record = {"config": model.config.to_dict(), "class_names": ["red", "blue", "none"],
              "preprocess": spec.to_dict(), "val_acc": None, "source": "tests"}
    save_vit(model, record, tmp_path / "one_patch.safetensors")
    x, y, _ = one_patch_images(40, np.random.default_rng(11), with_empty=False)
    for i, (image, label) in enumerate(zip(x.numpy(), y.tolist(), strict=True)):
        folder = tmp_path / "data" / record["class_names"][label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "results.json"
    args = ["--checkpoint", str(tmp_path / "one_patch.safetensors"), "--data", str(tmp_path / "data"),
            "--num-images", "40", "--steps", "4", "--output", str(out)]
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "random" in printed
    results = json.loads(out.read_text())
    auc = {m: r["auc"] for m, r in results["methods"].items()}
    print(auc)
    assert results["accuracy"] > 0.95
    for method in ("rollout", "gradient"):
        assert auc[method] < auc["random"] - 0.1, auc
    for r in results["methods"].values():  # nothing removed yet: every curve starts at the model's prob
        assert r["mean_curve"][0] == results["methods"]["random"]["mean_curve"][0]
