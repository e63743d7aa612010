"""OnnxClassifier (export/onnx_classifier.py): torch-free serving API, image inputs and modes,
batches, the attention output, bad models and providers."""

from __future__ import annotations

import glob
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, photo
from PIL import Image

from export.images import ImageLoadError
from export.onnx_classifier import OnnxClassifier, Prediction, resolve_providers, softmax
from vit.preprocess import Preprocess


@pytest.fixture(scope="module")
def clf(tiny_onnx: Path) -> OnnxClassifier:
    return OnnxClassifier(tiny_onnx)


def test_info_describes_the_model(clf: OnnxClassifier, tiny_onnx: Path) -> None:
    info = clf.info
    assert info.class_names == ["circle", "square", "stripes"]
    assert info.preprocess == Preprocess() and info.input_size == (32, 32)
    assert info.grid == (4, 4) and info.num_prefix_tokens == 1 and not info.has_attention
    assert info.config["dim"] == TINY["dim"] and 0.0 <= info.val_acc <= 1.0
    assert info.source["checkpoint"].endswith("tiny.ckpt") and info.variant == "fp32"
    assert clf.backend in ("onnxruntime", "openvino") and clf.precision in ("fp32", "bf16")
    assert clf.gate["reference"] == "onnxruntime fp32"  # vit-export --verify-images gated it
    ort = OnnxClassifier(tiny_onnx, backend="onnxruntime")
    assert ort.providers == ["CPUExecutionProvider"] and ort.runtime.startswith("onnxruntime")


def test_predict_accepts_pil_arrays_and_paths_alike(clf: OnnxClassifier, tiny_data: Path) -> None:
    path = sorted((tiny_data / "square").glob("*.png"))[0]
    image = Image.open(path)
    by_path, by_pil, by_array = clf.predict([path, image, np.asarray(image)], top_k=2)
    for pred in (by_path, by_pil, by_array):
        assert isinstance(pred, Prediction) and len(pred.labels) == 2 and pred.attention is None
        assert pred.labels == by_path.labels and pred.logits.shape == (3,)
        np.testing.assert_allclose(pred.scores, by_path.scores, rtol=1e-6)
    assert by_path.scores[0] >= by_path.scores[1] and sum(by_path.scores) <= 1 + 1e-6
    assert by_path.labels[0] == clf.info.class_names[int(by_path.logits.argmax())]
    (single,) = clf.predict(str(path), top_k=10)  # one image, k capped at the class count
    assert len(single.labels) == 3 and abs(sum(single.scores) - 1) < 1e-6


def test_to_dict_is_the_pipeline_shape(clf: OnnxClassifier, tiny_data: Path) -> None:
    path = sorted((tiny_data / "square").glob("*.png"))[0]
    (by_path,) = clf.predict(path, top_k=2)
    record = by_path.to_dict()
    assert list(record) == ["path", "predictions"] and record["path"] == str(path)
    assert [p["label"] for p in record["predictions"]] == by_path.labels
    assert [p["score"] for p in record["predictions"]] == by_path.scores
    (by_pil,) = clf.predict(Image.open(path), top_k=2)
    assert list(by_pil.to_dict()) == ["predictions"]  # no path for an image given in memory
    assert all(len(str(p["score"]).split(".")[1]) <= 3 for p in by_path.to_dict(digits=3)["predictions"])


def test_predict_takes_folders_globs_lazily_and_can_record_errors(clf: OnnxClassifier, tiny_data: Path,
                                                                   tmp_path: Path) -> None:
    folder = tiny_data / "circle"
    pattern = str(tiny_data / "stripes" / "00[01].png")
    preds = clf.predict([folder, pattern], top_k=1)
    assert [p.path for p in preds] == [*map(str, sorted(folder.glob("*.png"))), *sorted(glob.glob(pattern))]
    lazy = clf.predict_iter(folder, batch_size=2)
    assert isinstance(lazy, Iterator)
    first = next(lazy)
    assert first.path == str(sorted(folder.glob("*.png"))[0]) and first.error is None
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="bad.png: not an image format"):
        clf.predict([folder, tmp_path / "bad.png"])
    good = sorted(folder.glob("*.png"))[0]
    records = clf.predict([good, tmp_path / "bad.png", tmp_path / "nothing*.jpg", good], errors="record")
    assert [r.error is None for r in records] == [True, False, False, True]
    assert records[1].to_dict() == {"path": str(tmp_path / "bad.png"),
                                    "error": f"{tmp_path / 'bad.png'}: not an image format PIL can read"}
    assert "no such file" in records[2].error and records[3].labels == records[0].labels
    with pytest.raises(ValueError, match="errors must be one of raise, record"):
        clf.predict(good, errors="ignore")


def test_metadata_that_does_not_fit_the_graph_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    import json

    import onnx

    model = onnx.load(str(tiny_onnx))
    props = {p.key: p for p in model.metadata_props}
    names = [f"class{i}" for i in range(2)]  # the graph has 3 logits
    props["vit.class_names"].value = json.dumps(names)
    config = json.loads(props["vit.config"].value)
    props["vit.config"].value = json.dumps({**config, "num_classes": 2})
    onnx.save(model, str(tmp_path / "short.onnx"))
    with pytest.raises(ValueError, match=r"short.onnx: ONNX metadata does not match the model: "
                                         r"vit.class_names has 2 names for 3 logits"):
        OnnxClassifier(tmp_path / "short.onnx")
    props["vit.config"].value = json.dumps(config)
    props["vit.class_names"].value = json.dumps(["circle", "square", "stripes"])
    props["vit.preprocess"].value = json.dumps({"no_such_field": 1})
    onnx.save(model, str(tmp_path / "malformed.onnx"))
    with pytest.raises(ValueError, match="malformed.onnx: malformed ONNX metadata"):
        OnnxClassifier(tmp_path / "malformed.onnx")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_batches_agree_with_one_by_one(clf: OnnxClassifier, tiny_onnx: Path, tiny_data: Path,
                                               backend: str) -> None:
    paths = sorted(tiny_data.rglob("*.png"))[:7]
    fp32 = OnnxClassifier(tiny_onnx, backend=backend, precision="fp32")  # bf16 rounds by batch layout
    together = fp32.predict(paths, batch_size=3)
    alone = [fp32.predict(p)[0] for p in paths]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    batch = clf.preprocess(paths)
    assert batch.shape == (7, 3, 32, 32) and batch.dtype == np.float32
    assert set(clf.predict_batch(batch)) == {"logits"}
    with pytest.raises(ValueError, match=r"expected a \(B, 3, 32, 32\) batch"):
        clf.predict_batch(batch[:, :, :16])


def test_attention_model_returns_attention_when_asked(tiny_onnx_attention: Path, tiny_data: Path) -> None:
    clf = OnnxClassifier(tiny_onnx_attention)
    assert clf.info.has_attention and clf.output_names == ["logits", "attention", "contributions"]
    paths = sorted(tiny_data.rglob("*.png"))[:2]
    preds = clf.predict(paths, return_attention=True)
    assert all(p.attention.shape == (TINY["depth"], TINY["num_heads"], 17, 17) for p in preds)
    np.testing.assert_allclose(preds[0].attention.sum(-1), 1.0, atol=1e-2)  # rows sum to 1
    labels_only = clf.predict(paths)
    assert all(p.attention is None for p in labels_only)
    assert [p.labels for p in labels_only] == [p.labels for p in preds]
    batch = clf.preprocess(paths)
    assert set(clf.predict_batch(batch)) == {"logits", "attention", "contributions"}  # every output
    assert set(clf.predict_batch(batch, outputs=["logits"])) == {"logits"}
    with pytest.raises(ValueError, match=r"outputs: 'weights' asked for; .* has logits, attention, contrib"):
        clf.predict_batch(batch, outputs=["weights"])


def test_return_attention_needs_an_attention_output(clf: OnnxClassifier, tiny_data: Path) -> None:
    with pytest.raises(ValueError, match=r"return_attention: .*model.onnx has no attention output"):
        clf.predict(sorted(tiny_data.rglob("*.png"))[:1], return_attention=True)


def test_batch_preprocessing_equals_validation_preprocessing(clf: OnnxClassifier, tiny_data: Path) -> None:
    """The batched path (numpy crop of arrays, one normalization per batch) gives exactly
    what vit.preprocess gives image by image."""
    from vit.preprocess import preprocess_image

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((32, 32), (32, 40), (48, 32))]
    images = [*arrays, photo((50, 37)), photo().convert("L")]
    want = np.stack([preprocess_image(img if isinstance(img, Image.Image) else Image.fromarray(img),
                                      clf.info.preprocess) for img in images])
    np.testing.assert_array_equal(clf.preprocess(images), want)
    stacked = np.stack([images[0]] * 3)  # (B, H, W, 3) at once
    np.testing.assert_array_equal(clf.preprocess(stacked), np.stack([want[0]] * 3))


def _saved(image: Image.Image, fmt: str, **kwargs) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_image_modes_are_handled_as_a_viewer_shows_them(clf: OnnxClassifier, tmp_path: Path) -> None:
    rgb = photo()
    spec = clf.info.preprocess
    prep = lambda img: clf.preprocess(img)[0]
    gray = rgb.convert("L")
    np.testing.assert_allclose(prep(gray), prep(gray.convert("RGB")))  # gray: three equal channels
    assert np.allclose(prep(gray)[0] * spec.std[0] + spec.mean[0], prep(gray)[1] * spec.std[1] + spec.mean[1])
    rgba = rgb.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, :10] = 0  # a transparent strip shows the white background
    rgba.putalpha(Image.fromarray(alpha))
    on_white = np.asarray(rgb).copy()
    on_white[:, :10] = 255
    np.testing.assert_allclose(prep(rgba), prep(Image.fromarray(on_white)), atol=1e-6)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    np.testing.assert_allclose(prep(palette), prep(palette.convert("RGB")))
    cmyk = _saved(rgb.convert("CMYK"), "JPEG", quality=95)
    assert cmyk.mode == "CMYK"
    np.testing.assert_allclose(prep(cmyk), prep(cmyk.convert("RGB")))
    assert np.abs(prep(cmyk) - prep(rgb)).mean() < 0.1  # close to the original colours
    wide = (np.asarray(gray).astype(np.uint16) * 257)  # 16-bit: 0..65535
    sixteen = _saved(Image.fromarray(wide), "PNG")
    assert sixteen.mode.startswith("I")
    np.testing.assert_allclose(prep(sixteen), prep(gray), atol=1.5 / 255 / min(spec.std))


def test_exif_rotation_is_applied(clf: OnnxClassifier, tmp_path: Path) -> None:
    upright = photo((40, 56))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # camera sensor order
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=100, exif=exif)
    shown = clf.preprocess(path)[0]
    pixels = Image.fromarray(np.asarray(Image.open(path)))  # decoded pixels, EXIF dropped
    expected = clf.preprocess(pixels.transpose(Image.Transpose.ROTATE_270))[0]  # 90 degrees clockwise
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    assert np.abs(shown - clf.preprocess(upright)[0]).mean() < 0.05  # only JPEG loss
    assert np.abs(shown - clf.preprocess(pixels)[0]).mean() > 0.3  # not the sensor order


def test_bad_arrays_and_types_are_refused(clf: OnnxClassifier) -> None:
    with pytest.raises(ValueError, match="uint8 image array"):
        clf.predict(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(TypeError, match="cannot classify a int"):
        clf.predict([3])
    (pred,) = clf.predict(np.zeros((20, 30), np.uint8))  # a grayscale array is fine
    assert len(pred.labels) == 3


def test_corrupt_or_foreign_onnx_files_fail_at_load(tmp_path: Path, tiny_onnx: Path) -> None:
    data = tiny_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("not a model")
    for name in ("cut.onnx", "text.onnx"):
        for backend in ("onnxruntime", "openvino"):
            with pytest.raises(ValueError, match=rf"{name}: not a loadable ONNX model"):
                OnnxClassifier(tmp_path / name, backend=backend)
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such ONNX model file"):
        OnnxClassifier(tmp_path / "missing.onnx")
    import onnx

    bare = onnx.load(str(tiny_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="bare.onnx: missing ONNX metadata"):
        OnnxClassifier(tmp_path / "bare.onnx")


def test_unavailable_provider_falls_back_to_cpu(tiny_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    clf = OnnxClassifier(tiny_onnx, providers=["NoSuchExecutionProvider"], backend="onnxruntime")
    assert clf.providers == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider is not available" in caplog.text
    caplog.clear()
    clf = OnnxClassifier(tiny_onnx, providers="cuda")  # no GPU here: the CPU's own choice, named
    assert "cuda (CUDAExecutionProvider) is not available" in caplog.text
    assert "falling back to the CPU" in caplog.text
    default = OnnxClassifier(tiny_onnx)
    assert (clf.backend, clf.precision) == (default.backend, default.precision)


def test_serving_path_never_imports_torch(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    image = sorted(tiny_data.rglob("*.png"))[0]
    code = f"""
import sys
from export import OnnxClassifier, read_metadata
from export.predict import main
clf = OnnxClassifier({str(tiny_onnx)!r})
assert clf.predict([{str(image)!r}])[0].labels
assert read_metadata({str(tiny_onnx)!r}).class_names
assert main(["--model", {str(tiny_onnx)!r}, {str(image)!r}, "-o", {str(tmp_path / "p.csv")!r}]) == 0
bad = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision", "timm"))]
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_softmax_rows_sum_to_one_without_overflow() -> None:
    probs = softmax(np.array([[1000.0, 1000.0, 0.0], [0.0, 1.0, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs[0], [0.5, 0.5, 0.0], atol=1e-12)
