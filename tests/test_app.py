"""The Gradio demo (demo/app.py): the launched server answers like the classifier, survives
bad uploads and concurrent clients, clamps out-of-range settings sent through its API,
serves no other files, starts safe by default, and says what to do without a model."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, REPO, corrupt_files
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from demo.app import (  # noqa: E402
    EXAMPLES_DIR,
    _settings,
    build_app,
    example_images,
    launch_options,
    main,
    model_panel,
    queue_options,
)
from demo.backend import OnnxBackend, TorchBackend  # noqa: E402
from demo.views import VIEWS, ViewSettings, analyze, open_upload, render  # noqa: E402
from export.onnx_classifier import OnnxClassifier  # noqa: E402


def test_examples_are_shipped() -> None:
    names = [Path(p).name for p in example_images()]
    assert len(names) >= 6 and "chelsea_cat.jpg" in names
    assert (EXAMPLES_DIR / "SOURCES.md").is_file()
    for p in example_images():
        assert Image.open(p).size >= (32, 32)


def test_server_survives_bad_uploads(demo_server: gr.Blocks, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_server.local_url, verbose=False)
    for name, path in corrupt_files(tmp_path).items():
        with pytest.raises(AppError, match="Cannot use") as info:
            client.predict(handle_file(str(path)), api_name="/classify")
        print(f"{name}: {info.value}")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 1024 * 1024))  # over the 10 MB upload limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(handle_file(str(big)), api_name="/classify")
    label = client.predict(handle_file(example_images()[0]), api_name="/classify")[0]
    assert label["label"] in CLASSES  # still serving


def test_server_answers_like_the_classifier(demo_server: gr.Blocks, demo_model: dict[str, Path]) -> None:
    from gradio_client import Client, handle_file

    client = Client(demo_server.local_url, verbose=False)
    reference = OnnxClassifier(demo_model["onnx"])
    for path in example_images()[:3]:
        label, original, overlay, _, _ = client.predict(handle_file(path), api_name="/classify")
        [want] = reference.predict(path, top_k=5)
        assert [c["label"] for c in label["confidences"]] == want.labels
        np.testing.assert_allclose([c["confidence"] for c in label["confidences"]], want.scores, rtol=1e-6)
        assert Image.open(original).size == Image.open(overlay).size


def test_concurrent_clients(demo_server: gr.Blocks) -> None:
    """50 requests from 8 clients at once: no errors; latency percentiles are printed."""
    from gradio_client import Client, handle_file

    paths = example_images()
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    clients = [Client(demo_server.local_url, verbose=False) for _ in range(8)]

    def request(i: int) -> None:
        start = time.perf_counter()
        try:
            label = clients[i % 8].predict(handle_file(paths[i % len(paths)]), api_name="/classify")[0]
            assert label["label"] in CLASSES
        except BaseException as exc:  # noqa: BLE001 -- every failure is counted
            with lock:
                errors.append(exc)
            return
        with lock:
            latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(request, range(50)))
    assert not errors, errors[:3]
    q = statistics.quantiles(latencies, n=100)
    print(f"\n50 requests, 8 concurrent clients: p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms")


def test_server_serves_no_other_files(demo_server: gr.Blocks) -> None:
    secret = Path(__file__)
    base = demo_server.local_url
    for url in (f"{base}gradio_api/file={secret}", f"{base}gradio_api/file=/etc/passwd",
                f"{base}file=/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code in (403, 404)
    example = example_images()[0]
    with urllib.request.urlopen(f"{demo_server.local_url}gradio_api/file={example}", timeout=10) as response:
        assert response.status == 200


def test_safe_defaults() -> None:
    options = launch_options()
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["enable_monitoring"] is False and options["max_file_size"] == "10mb"
    assert options["allowed_paths"] == [str(EXAMPLES_DIR)]
    assert queue_options()["max_size"] > 0


def test_main_without_a_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    import demo.app

    monkeypatch.setattr(demo.app, "DEFAULT_CLASSIFIER", tmp_path / "models" / "cifar10_vit.onnx")  # none
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "vit-train fit --config training/configs/cifar10.yaml" in err and "vit-export" in err
    assert main(["--model", str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert main(["--model", str(tmp_path / "junk.onnx")]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err


def test_translator_flag_is_checked(demo_model: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", str(demo_model["onnx"]), "--translator", "/nonexistent/translator"]) == 2
    assert "--translator" in capsys.readouterr().err


def test_onnx_serving_path_imports_no_torch(demo_model: dict[str, Path]) -> None:
    code = ("import sys; from demo.app import build_app; from demo.backend import load_backend; "
            "from demo.views import analyze, open_upload, render, ViewSettings; "
            f"b = load_backend({str(demo_model['onnx'])!r}); build_app(b); "
            f"render(b.card, analyze(b, open_upload({example_images()[0]!r})), ViewSettings()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_settings_clamp_out_of_range_values() -> None:
    """What the page or an API call sends, unchecked -> valid settings."""
    s = _settings("Raw attention (one layer)", "max", 5.0, -3, 99, "7", 2.0)
    assert s == ViewSettings(view=VIEWS[1], head_fusion="max", discard_ratio=0.95, start_layer=0, layer=99,
                             head="7", opacity=1.0)  # layer and head: clamped to the model when drawn
    s = _settings("no such view", "median", -1.0, "x", None, "-2", -0.5)
    assert s == ViewSettings(view=VIEWS[0], head_fusion="mean", discard_ratio=0.0, start_layer=0, layer=-1,
                             head="mean", opacity=0.0)
    s = _settings(VIEWS[0], "min", "0.3", 2.7, -1e9, None, "nan?")
    assert (s.head_fusion, s.discard_ratio, s.start_layer, s.layer, s.head, s.opacity) == \
        ("min", 0.3, 2, -1_000_000, "mean", 0.5)


def test_api_settings_out_of_range_are_clamped(demo_server: gr.Blocks, demo_model: dict[str, Path]) -> None:
    """Out-of-range map settings sent to /classify (which takes them unchecked) draw exactly the
    map of the clamped settings: discard ratio 0.95, first layer 0, opacity 1, the last layer
    and head of the model."""
    from gradio_client import Client, handle_file

    backend = OnnxBackend(demo_model["onnx"])
    card = backend.card
    path = example_images()[1]
    session = analyze(backend, open_upload(path))
    client = Client(demo_server.local_url, verbose=False)
    last_layer, last_head = card.depth - 1, str(card.num_heads - 1)
    sent = {
        VIEWS[1]: ((VIEWS[1], "max", 5.0, -3, 99, "7", 2.0),
                   ViewSettings(view=VIEWS[1], layer=last_layer, head=last_head, opacity=1.0)),
        VIEWS[0]: ((VIEWS[0], "max", 5.0, -3, 99, "7", 2.0),
                   ViewSettings(head_fusion="max", discard_ratio=0.95, start_layer=0, opacity=1.0)),
    }
    drawn = {}
    for view, (controls, clamped) in sent.items():
        label, _, overlay, _, _ = client.predict(handle_file(path), *controls, api_name="/classify")
        assert label["label"] in CLASSES
        drawn[view] = np.asarray(Image.open(overlay).convert("RGB"))
        np.testing.assert_array_equal(drawn[view], np.asarray(render(card, session, clamped)))
    assert not np.array_equal(drawn[VIEWS[0]], drawn[VIEWS[1]])
    # in range, the settings are used as sent: a different picture from the clamped one
    inside = ViewSettings(view=VIEWS[1], layer=0, head="0", opacity=0.5)
    _, _, overlay, _, _ = client.predict(handle_file(path), VIEWS[1], "mean", 0.0, 0, 0, "0", 0.5,
                                         api_name="/classify")
    np.testing.assert_array_equal(np.asarray(Image.open(overlay).convert("RGB")),
                                  np.asarray(render(card, session, inside)))
    assert not np.array_equal(np.asarray(render(card, session, inside)), drawn[VIEWS[1]])


def test_model_panel_describes_the_model(demo_model: dict[str, Path]) -> None:
    onnx = model_panel(OnnxBackend(demo_model["onnx"]).card)
    assert "`tiny.onnx`" in onnx and "ONNX Runtime" in onnx and "circle, square, stripes" in onnx
    assert "2 layers x 2 heads" in onnx and "grid 4x4 + 1 class token" in onnx and "75.00%" in onnx
    assert "attention rollout and raw attention" in onnx and "class-specific" not in onnx
    torch_panel = model_panel(TorchBackend(demo_model["checkpoint"]).card)
    assert "PyTorch" in torch_panel and "class-specific gradient-weighted rollout" in torch_panel


def test_app_events_have_api_names_and_the_translate_tab(demo_model: dict[str, Path], toy_onnx: Path) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    names = {dep.get("api_name") for dep in build_app(backend).config["dependencies"]}
    assert {"classify", "redraw", "explain", "load_example"} <= names and "translate" not in names
    with_tab = build_app(backend, translator=toy_onnx)
    names = {dep.get("api_name") for dep in with_tab.config["dependencies"]}
    assert {"classify", "translate", "translate_alignment"} <= names


def test_identical_concurrent_requests_all_get_whole_images(demo_server: gr.Blocks) -> None:
    """60 identical requests from 12 clients at once (loopback, bounded): every response's
    images download whole and decode -- identical outputs must not be rewritten in the
    cache while another response is being served."""
    from gradio_client import Client, handle_file

    path = example_images()[0]
    clients = [Client(demo_server.local_url, verbose=False) for _ in range(12)]

    def request(i: int) -> tuple[int, int, int]:
        label, original, overlay, *_ = clients[i % 12].predict(handle_file(path), api_name="/classify")
        sizes = []
        for image in (original, overlay):
            with Image.open(image) as img:
                img.load()  # a truncated file fails here
                sizes.append(img.size)
        return len(label["confidences"]), *sizes[1]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(request, range(60)))
    assert len(set(results)) == 1 and results[0][1] > 0  # every answer whole and the same


def test_predict_endpoints_take_named_files_and_return_plain_data(demo_server: gr.Blocks,
                                                                  tmp_path: Path) -> None:
    """/predict and /predict_batch: named parameters, plain JSON-able answers in the project's
    prediction shape, a readable error per bad file in a batch and as the message of /predict."""
    from gradio_client import Client, handle_file

    client = Client(demo_server.local_url, verbose=False)
    info = client.view_api(return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in info["/predict"]["parameters"]] == ["image", "top_k"]
    assert [p["parameter_name"] for p in info["/predict_batch"]["parameters"]] == ["images", "top_k"]
    assert [p["parameter_name"] for p in info["/classify"]["parameters"]] == [
        "image", "view", "head_fusion", "discard_ratio", "start_layer", "layer", "head", "opacity"]
    path = example_images()[0]
    one = client.predict(image=handle_file(path), top_k=2, api_name="/predict")
    assert one["name"] == Path(path).name and len(one["predictions"]) == 2
    assert one["predictions"][0]["label"] in CLASSES and 0 < one["predictions"][0]["score"] <= 1
    assert one["predictions"][0]["score"] >= one["predictions"][1]["score"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    many = client.predict(images=[handle_file(path), handle_file(str(bad))], top_k=99,
                          api_name="/predict_batch")
    assert many[0]["predictions"] == client.predict(image=handle_file(path), top_k=3, api_name="/predict")[
        "predictions"]  # top_k clamped to the 3 classes
    assert many[1]["name"] == "broken.png" and "broken.png" in many[1]["error"]
    with pytest.raises(Exception, match="broken.png"):
        client.predict(image=handle_file(str(bad)), api_name="/predict")


def test_explain_accepts_every_class_of_the_model(demo_server: gr.Blocks) -> None:
    """The class picker offers every class from the start, so /explain takes any class name
    through the API (before: 'Value: ... is not in the list of choices: []')."""
    from gradio_client import Client

    client = Client(demo_server.local_url, verbose=False)
    for name in CLASSES:
        assert client.predict(name, 0.5, api_name="/explain") is None  # no image analysed yet: no map
