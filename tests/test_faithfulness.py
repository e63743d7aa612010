"""benchmarks/faithfulness.py: on images whose class is decided by one patch, deleting
patches in the order of a faithful map destroys the prediction faster than a random order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark, make_image_folder, one_patch_images, train_one_patch_vit
from PIL import Image

from export.vit_export import ExportOptions, export_checkpoint
from vit.checkpoint import save_vit
from vit.preprocess import Preprocess


def test_area_under_curve() -> None:
    bench = load_benchmark("faithfulness")
    np.testing.assert_allclose(bench.area_under(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), [1.0, 0.25])


def test_deletion_ranks_faithful_maps_above_random(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark("faithfulness")
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
    export_checkpoint(tmp_path / "one_patch.safetensors", tmp_path / "one_patch.onnx",
                      ExportOptions(return_attention=True, num_verify=8))
    for flag, path in (("--checkpoint", "one_patch.safetensors"), ("--model", "one_patch.onnx")):
        out = tmp_path / f"{path}.json"
        args = [flag, str(tmp_path / path), "--data", str(tmp_path / "data"), "--num-images", "40",
                "--steps", "4", "--output", str(out)]
        assert bench.main(args) == 0
        printed = capsys.readouterr().out
        assert "deletion AUC" in printed and "insertion AUC" in printed and "per class" in printed
        results = json.loads(out.read_text())
        deletion = {m: r["deletion"]["auc"] for m, r in results["methods"].items()}
        insertion = {m: r["insertion"]["auc"] for m, r in results["methods"].items()}
        print(flag, deletion, insertion)
        assert results["accuracy"] > 0.95
        faithful = ("rollout", "contribution-rollout", "rise", "occlusion")
        faithful += ("gradient",) if flag == "--checkpoint" else ()
        assert set(faithful) < set(deletion) and ("gradient" in deletion) == (flag == "--checkpoint")
        for method in faithful:
            assert deletion[method] < deletion["random"] - 0.1, deletion
            assert insertion[method] > insertion["random"] + 0.1, insertion
        for r in results["methods"].values():  # nothing removed yet: every curve starts at the model's prob
            assert r["deletion_curve"][0] == results["methods"]["random"]["deletion_curve"][0]
            assert r["insertion_curve"][-1] == r["deletion_curve"][0]  # everything restored
        assert set(results["per_class"]["random"]) == {"red", "blue"}


def test_validation_split_is_vit_trains(tmp_path: Path) -> None:
    """--split val draws only from the images vit-train holds out (same scan, same split)."""
    from vit.image_folder import scan_folder, split_indices

    bench = load_benchmark("faithfulness")
    make_image_folder(tmp_path / "data", per_class=20)
    found = scan_folder(tmp_path / "data")
    _, val = split_indices(found.labels, 0.25, 3)
    items = bench.sample_images(tmp_path / "data", list(reversed(found.class_names)), 100, 0, split="val",
                                val_fraction=0.25, split_seed=3)
    assert sorted(p for p, _ in items) == sorted(found.files[i] for i in val)
    names = list(reversed(found.class_names))  # the model's order need not be the folder's
    assert all(names[label] == path.parent.name for path, label in items)
