"""Serving backends (export/backends.py, export/providers.py): the auto choice with and without
a gate record, fallbacks when a backend or provider is missing, OpenVINO = onnxruntime on a
tiny model, the logits-only path, I/O binding, GPU provider options and the refusal of two
onnxruntime distributions side by side."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from export import backends, providers
from export.backends import OpenVinoRunner, OrtRunner, choose
from export.onnx_classifier import OnnxClassifier

CPU_BF16 = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


@pytest.fixture
def batch(tiny_data: Path, tiny_onnx_attention: Path) -> np.ndarray:
    clf = OnnxClassifier(tiny_onnx_attention, backend="onnxruntime")
    return clf.preprocess(sorted(tiny_data.rglob("*.png"))[:8])


def test_auto_takes_reduced_precision_only_where_the_gate_passed() -> None:
    passed = {("openvino", "bf16"): True, ("openvino", "fp32"): True}
    assert choose("auto", "auto", available=CPU_BF16, passed=passed) == ("openvino", "bf16")
    failed = {("openvino", "bf16"): False, ("openvino", "fp32"): True}
    assert choose("auto", "auto", available=CPU_BF16, passed=failed) == ("openvino", "fp32")
    # no record: fp32 on the fastest fp32 backend
    assert choose("auto", "auto", available=CPU_BF16) == ("openvino", "fp32")
    # a backend that failed even in fp32 is skipped
    assert choose("auto", "auto", available=CPU_BF16, passed={("openvino", "fp32"): False}) \
        == ("onnxruntime", "fp32")
    # a CPU without bf16: the passing record cannot be used here
    assert choose("auto", "auto", available={"openvino": ("fp32",), "onnxruntime": ("fp32",)},
                  passed=passed) == ("openvino", "fp32")
    assert choose("onnxruntime", "auto", available=CPU_BF16, passed=passed) == ("onnxruntime", "fp32")
    # with a GPU provider, onnxruntime; fp16 (TensorRT) only where it passed
    gpu = {"onnxruntime": ("fp32", "fp16"), "openvino": ("fp32", "bf16")}
    assert choose("auto", "auto", available=gpu, passed=passed, gpu=True) == ("onnxruntime", "fp32")
    assert choose("auto", "auto", available=gpu, passed={("onnxruntime", "fp16"): True}, gpu=True) \
        == ("onnxruntime", "fp16")


def test_explicit_precision_runs_as_asked_or_is_refused_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    assert choose("auto", "bf16", available=CPU_BF16) == ("openvino", "bf16")
    assert "openvino bf16 has no record of the parity gate; running it as asked" in caplog.text
    with pytest.raises(ValueError, match=r"m.onnx: precision bf16 is not available on onnxruntime on this "
                                         r"machine \(available: onnxruntime fp32; openvino fp32, bf16\)$"):
        choose("onnxruntime", "bf16", available=CPU_BF16, where="m.onnx")
    with pytest.raises(ValueError, match="precision fp16 is not available on this machine"):
        choose("auto", "fp16", available=CPU_BF16)
    with pytest.raises(ValueError, match="backend must be auto, onnxruntime, openvino; got 'tvm'"):
        choose("tvm", "auto", available=CPU_BF16)


def test_missing_backend_falls_back_with_one_named_line(caplog: pytest.LogCaptureFixture) -> None:
    only_ort = {"onnxruntime": ("fp32",)}
    missing = {"openvino": backends.OPENVINO_MISSING}
    with caplog.at_level(logging.WARNING):
        assert choose("openvino", "bf16", available=only_ort, missing=missing, where="m.onnx") \
            == ("onnxruntime", "fp32")
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("m.onnx: backend openvino is not available (openvino is not installed")
    assert line.endswith("falling back to onnxruntime fp32 (bf16 is not available without it)")


def test_openvino_not_installed_serves_with_onnxruntime(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    backends.openvino_capabilities.cache_clear()
    try:
        clf = OnnxClassifier(tiny_onnx, backend="openvino")
        assert (clf.backend, clf.precision) == ("onnxruntime", "fp32")
        assert "backend openvino is not available (openvino is not installed" in caplog.text
        default = OnnxClassifier(tiny_onnx)
        assert (default.backend, default.precision) == ("onnxruntime", "fp32")
    finally:
        backends.openvino_capabilities.cache_clear()


def test_openvino_serves_without_onnxruntime(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(providers, "_checked", True)
    clf = OnnxClassifier(tiny_onnx)  # the metadata is read with onnx, the graph run by OpenVINO
    assert clf.backend == "openvino" and len(clf.predict(np.zeros((32, 32, 3), np.uint8))[0].labels) == 3
    assert OnnxClassifier(tiny_onnx, backend="onnxruntime", precision="fp32").backend == "openvino"
    assert "backend onnxruntime is not available (onnxruntime is not installed" in caplog.text


def test_openvino_that_cannot_compile_falls_back(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def refuse(path, **kwargs):
        raise ValueError(f"{path}: OpenVINO cannot compile it (Unsupported operator SkipLayerNormalization)")

    monkeypatch.setattr(backends, "OpenVinoRunner", refuse)
    clf = OnnxClassifier(tiny_onnx, backend="openvino", precision="fp32")
    assert clf.backend == "onnxruntime"
    assert "cannot compile it (Unsupported operator SkipLayerNormalization); falling back to onnxruntime" \
        in caplog.text


def test_openvino_agrees_with_onnxruntime(tiny_onnx_attention: Path, batch: np.ndarray) -> None:
    ort = OrtRunner(tiny_onnx_attention, ["CPUExecutionProvider"], threads=1)
    ov = OpenVinoRunner(tiny_onnx_attention, precision="fp32", threads=1)
    want, got = ort.run(batch, ["logits", "attention"]), ov.run(batch, ["logits", "attention"])
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    np.testing.assert_allclose(got["attention"], want["attention"], atol=1e-5)
    assert got["logits"].dtype == np.float32 and got["attention"].shape == want["attention"].shape
    if "bf16" in backends.availability()[0].get("openvino", ()):
        low = OpenVinoRunner(tiny_onnx_attention, precision="bf16", threads=1).run(batch, ["logits"])
        np.testing.assert_allclose(low["logits"], want["logits"], atol=0.15)
        assert (low["logits"].argmax(1) == want["logits"].argmax(1)).mean() >= 0.75


def test_labels_only_never_compute_or_fetch_attention(tiny_onnx_attention: Path, tiny_data: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    images = sorted(tiny_data.rglob("*.png"))[:3]
    ov = OnnxClassifier(tiny_onnx_attention, backend="openvino", precision="fp32", intra_op_threads=1)
    ov.predict(images)
    assert ov.runner.compiled_outputs == [("logits",)]  # the compiled graph ends at the logits
    ov.predict(images, return_attention=True)
    assert ov.runner.compiled_outputs == [("logits",), ("logits", "attention")]
    ort = OnnxClassifier(tiny_onnx_attention, backend="onnxruntime", intra_op_threads=1)
    asked = []
    run = ort.runner.session.run
    spy = lambda names, feed: asked.append(names) or run(names, feed)
    monkeypatch.setattr(ort.runner.session, "run", spy)
    ort.predict(images)
    ort.predict(images, return_attention=True)
    assert asked == [["logits"], ["logits", "attention"]]


def test_fixed_batch_models_agree_with_the_dynamic_one(tiny_onnx: Path, batch: np.ndarray) -> None:
    ov = OpenVinoRunner(tiny_onnx, precision="fp32", threads=1, static_batches=(2,))
    want = OrtRunner(tiny_onnx, ["CPUExecutionProvider"], threads=1).run(batch, ["logits"])["logits"]
    np.testing.assert_allclose(ov.run(batch[:2], ["logits"])["logits"], want[:2], atol=1e-4)
    np.testing.assert_allclose(ov.run(batch[:3], ["logits"])["logits"], want[:3], atol=1e-4)
    assert sorted(ov._compiled, key=str) == [(("logits",), 2), (("logits",), None)]
    compiled = ov._compiled[(("logits",), 2)][0]
    assert compiled.inputs[0].get_partial_shape().to_shape()[0] == 2  # a model with the batch fixed


def test_openvino_serves_concurrent_callers(tiny_onnx: Path, batch: np.ndarray) -> None:
    clf = OnnxClassifier(tiny_onnx, backend="openvino", precision="fp32", intra_op_threads=1)
    want = clf.predict_batch(batch)["logits"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: clf.predict_batch(batch[i % 3:])["logits"], range(12)))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, want[i % 3:])


def test_io_binding_writes_the_same_outputs(tiny_onnx_attention: Path, batch: np.ndarray) -> None:
    plain = OrtRunner(tiny_onnx_attention, ["CPUExecutionProvider"], threads=1, io_binding=False)
    bound = OrtRunner(tiny_onnx_attention, ["CPUExecutionProvider"], threads=1, io_binding=True)
    for outputs in (["logits"], ["logits", "attention"]):
        want, got = plain.run(batch, outputs), bound.run(batch, outputs)
        assert list(got) == outputs
        for name in outputs:
            np.testing.assert_array_equal(got[name], want[name])


def test_gpu_providers_carry_device_fp16_cache_and_fallbacks(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    ort = providers.import_onnxruntime()
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    loaded = []
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: loaded.append(True), raising=False)
    trt, cuda, cpu = providers.resolve_providers("tensorrt:1", fp16=True, cache_dir=tmp_path,
                                                 input_shape=("images", (3, 32, 32)))
    assert trt[0] == "TensorrtExecutionProvider" and cpu == "CPUExecutionProvider"
    assert trt[1]["device_id"] == 1 and trt[1]["trt_fp16_enable"] is True
    assert trt[1]["trt_engine_cache_enable"] and trt[1]["trt_engine_cache_path"] == str(tmp_path)
    assert trt[1]["trt_profile_min_shapes"] == "images:1x3x32x32"
    assert trt[1]["trt_profile_max_shapes"] == f"images:{providers.TRT_MAX_BATCH}x3x32x32"
    assert cuda == ("CUDAExecutionProvider", {"device_id": 1}) and loaded
    assert providers.resolve_providers(["cuda:2", "cpu"]) == [("CUDAExecutionProvider", {"device_id": 2}),
                                                             "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="the device after ':' must be a number"):
        providers.resolve_providers("cuda:first")


def test_two_onnxruntime_distributions_are_refused(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    with pytest.raises(RuntimeError, match=r"^onnxruntime and onnxruntime-gpu are both installed .*"
                                           r"pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                                           r"onnxruntime-gpu$"):
        providers.check_one_flavour(["onnxruntime", "onnxruntime-gpu"])
    providers.check_one_flavour(["onnxruntime"])
    real = importlib.metadata.distribution

    def both(name: str):
        return real("onnxruntime") if name in ("onnxruntime", "onnxruntime-gpu") else real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", both)
    monkeypatch.setattr(providers, "_checked", False)
    assert providers.installed_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.raises(RuntimeError, match="onnxruntime and onnxruntime-gpu are both installed"):
        OnnxClassifier(tiny_onnx, backend="onnxruntime")
