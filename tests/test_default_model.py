"""The shipped default model: it loads, its metadata is complete, its two files agree, and it
classifies the demo's example images as their names say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.app import example_images
from export.onnx_classifier import OnnxClassifier
from vit.checkpoint import load_vit
from vit.paths import DEFAULT_CLASSIFIER, MODELS_DIR
from vit.preprocess import Preprocess, preprocess_image

MODELS = MODELS_DIR
WEIGHTS = MODELS / "cifar10_vit.safetensors"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def model() -> OnnxClassifier:
    return OnnxClassifier(DEFAULT_CLASSIFIER)


def test_default_classifier_is_in_the_models_folder() -> None:
    assert DEFAULT_CLASSIFIER == MODELS_DIR / "cifar10_vit.onnx" and DEFAULT_CLASSIFIER.is_file()


def labelled_examples() -> list[tuple[str, str]]:
    """(path, label) for every shipped example whose file name names its class (the others,
    e.g. a rocket launch, show a picture of no class)."""
    out = []
    for path in example_images():
        name = Path(path).stem
        label = next((c for c in CIFAR10 if c in name), None)
        if label is not None:
            out.append((path, label))
    return out


def test_metadata_is_complete(model: OnnxClassifier) -> None:
    info = model.info
    assert info.class_names == CIFAR10
    assert isinstance(info.preprocess, Preprocess) and info.preprocess.crop_size == 32
    assert info.has_attention
    assert info.val_acc is not None and 0.8 < info.val_acc <= 1.0
    assert info.config["patch_size"] > 0 and info.config["num_classes"] == 10
    assert info.source
    card = (MODELS / "MODEL_CARD.md").read_text()
    assert f"{info.val_acc:.2%}"[:4] in card or f"{100 * info.val_acc:.1f}" in card
    evaluation = json.loads((MODELS / "evaluation.json").read_text())
    assert evaluation["class_names"] == CIFAR10 and sum(map(sum, evaluation["confusion"])) == 5000


def test_examples_classified_as_labelled(model: OnnxClassifier) -> None:
    examples = labelled_examples()
    assert examples  # the examples are photos never trained on (demo/examples/SOURCES.md)
    predictions = model.predict([p for p, _ in examples], top_k=1, return_attention=True)
    wrong = [(Path(p).name, pred.labels[0]) for (p, label), pred in zip(examples, predictions, strict=True)
             if pred.labels[0] != label]
    assert not wrong, f"misclassified examples: {wrong}"
    assert all(pred.attention is not None for pred in predictions)


def test_safetensors_weights_equal_onnx(model: OnnxClassifier) -> None:
    vit, record = load_vit(WEIGHTS)
    assert record["class_names"] == CIFAR10
    batch = np.stack([preprocess_image(_open(p), model.info.preprocess) for p in example_images()])
    with torch.no_grad():
        expected = vit(torch.from_numpy(batch)).numpy()
    fp32 = OnnxClassifier(DEFAULT_CLASSIFIER, backend="onnxruntime", precision="fp32")  # the file itself
    np.testing.assert_allclose(fp32.predict_batch(batch)["logits"], expected, atol=1e-4, rtol=0)


def _open(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def test_an_installed_copy_finds_the_packaged_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``pip install .`` (not editable) vit/ lives in site-packages without the repository's
    models/: the shipped files come from the data package vit_models that pyproject.toml builds."""
    import importlib

    from vit import paths

    pyproject = (paths.REPO_ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11)
    assert f'package-dir = {{ {paths.PACKAGED_MODELS} = "models" }}' in pyproject
    assert f'"{paths.PACKAGED_MODELS}"]' in pyproject and f'{paths.PACKAGED_MODELS} = ["*.onnx"' in pyproject
    assert paths.models_dir() == MODELS_DIR == paths.REPO_ROOT / "models"  # a checkout reads models/
    site = tmp_path / "site-packages"
    (site / paths.PACKAGED_MODELS).mkdir(parents=True)
    (site / paths.PACKAGED_MODELS / "cifar10_vit.onnx").write_bytes(b"model")
    monkeypatch.setattr(paths, "REPO_ROOT", site)  # where vit/ of an installed copy sits
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert paths.models_dir() == site / paths.PACKAGED_MODELS
