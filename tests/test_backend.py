"""What the demo serves from (demo/backend.py): the ONNX back end gives the classifier's
predictions and attention; the checkpoint back end agrees and adds class-specific maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import timm_vit

from demo.app import example_images
from demo.backend import OnnxBackend, TorchBackend, load_backend
from demo.views import analyze, open_upload
from export.onnx_classifier import OnnxClassifier


def real_images(demo_model: dict[str, Path]) -> list[Path]:
    return [Path(p) for p in example_images()] + sorted(demo_model["images"].rglob("*.png"))[::8]


def test_prediction_equals_onnx_classifier(demo_model: dict[str, Path]) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    reference = OnnxClassifier(demo_model["onnx"])
    import inspect

    asks = "return_attention" in inspect.signature(reference.predict).parameters  # since #17: asked for
    attention = {"return_attention": True} if asks else {}
    for path in real_images(demo_model):
        session = analyze(backend, open_upload({"path": str(path), "orig_name": path.name}))
        [want] = reference.predict(path, top_k=5, **attention)
        assert session.analysis.labels == want.labels
        np.testing.assert_allclose(session.analysis.probs, want.scores, rtol=1e-6)
        np.testing.assert_allclose(session.analysis.attention, want.attention, rtol=1e-6)


def test_checkpoint_backend_agrees_and_adds_class_maps(demo_model: dict[str, Path]) -> None:
    onnx, ckpt = OnnxBackend(demo_model["onnx"]), TorchBackend(demo_model["checkpoint"])
    assert ckpt.card.class_specific and onnx.card.class_specific
    image = open_upload(str(example_images()[0]))
    a, b = onnx.analyze(image), ckpt.analyze(image)
    assert a.labels == b.labels
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
    assert b.class_map.shape == ckpt.card.grid
    np.testing.assert_allclose(a.class_map, b.class_map, atol=1e-3)  # the same method on both
    other = ckpt.explain(b.pixels, b.indices[1])
    assert other.shape == ckpt.card.grid and not np.allclose(other, b.class_map)


def test_onnx_class_maps_come_from_the_file(demo_model: dict[str, Path]) -> None:
    """The ONNX back end's class-specific map is OnnxClassifier.class_map of the same input,
    for the top class by default and any class on request."""
    backend = OnnxBackend(demo_model["onnx"])
    analysis = backend.analyze(open_upload(str(example_images()[0])))
    assert backend.card.class_specific and backend.card.class_method
    class_map = backend.classifier.class_map
    np.testing.assert_allclose(analysis.class_map, class_map(analysis.pixels, analysis.indices[0]))
    for k in range(len(backend.card.class_names)):
        np.testing.assert_allclose(backend.explain(analysis.pixels, k), class_map(analysis.pixels, k))


def test_backend_and_precision_reach_the_classifier(demo_model: dict[str, Path]) -> None:
    """vit-demo --backend/--precision: passed to OnnxClassifier, and the card says what runs;
    a checkpoint refuses them (it runs in PyTorch)."""
    import inspect

    with pytest.raises(ValueError, match="--backend, --precision and --provider apply to .onnx files"):
        load_backend(demo_model["checkpoint"], backend="openvino")
    if "backend" not in inspect.signature(OnnxClassifier).parameters:  # before #17's backend choice
        with pytest.raises(ValueError, match="--backend: this installation's OnnxClassifier has no"):
            load_backend(demo_model["onnx"], backend="onnxruntime")
        return
    backend = load_backend(demo_model["onnx"], backend="onnxruntime", precision="fp32")
    clf = backend.classifier
    assert (clf.backend, clf.precision) == ("onnxruntime", "fp32")
    assert backend.card.runtime == clf.runtime and "fp32" in backend.card.runtime
    auto = load_backend(demo_model["onnx"])
    assert auto.card.runtime == auto.classifier.runtime


def test_cards_describe_the_same_model(demo_model: dict[str, Path]) -> None:
    a, b = OnnxBackend(demo_model["onnx"]).card, TorchBackend(demo_model["checkpoint"]).card
    for field in ("class_names", "preprocess", "grid", "num_prefix_tokens", "pool", "depth", "num_heads",
                  "stem", "val_acc", "has_attention"):
        assert getattr(a, field) == getattr(b, field), field
    assert tuple(a.input_size) == tuple(b.input_size) == (32, 32)
    assert b.runtime == "PyTorch" and a.runtime and ("onnxruntime" in a.runtime or "OpenVINO" in a.runtime)


def test_load_backend_by_file_type(demo_model: dict[str, Path], tmp_path: Path) -> None:
    assert isinstance(load_backend(demo_model["onnx"]), OnnxBackend)
    assert isinstance(load_backend(demo_model["checkpoint"]), TorchBackend)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_backend(tmp_path / "missing.onnx")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="expected an .onnx file or a .ckpt/.safetensors checkpoint"):
        load_backend(tmp_path / "model.pt")
    from safetensors.torch import save_file

    save_file(timm_vit(8, 32, "token", None, dim=32, depth=1, heads=2).state_dict(),
              str(tmp_path / "timm.safetensors"))
    with pytest.raises(ValueError, match="no class names or preprocessing record"):
        load_backend(tmp_path / "timm.safetensors")
    torch.manual_seed(0)
