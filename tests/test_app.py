"""The Gradio demo: predictions equal the ONNX classifier's, bad uploads get messages, the
launched server answers concurrent clients, and it starts safe by default."""

from __future__ import annotations

import io
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSES, make_image_folder
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from demo.app import EXAMPLES_DIR, build_app, example_images, launch_options, main, queue_options  # noqa: E402
from demo.backend import OnnxBackend, TorchBackend, load_backend  # noqa: E402
from demo.overlay import crop_box, draw_overlay  # noqa: E402
from demo.views import VIEWS, UploadError, ViewSettings, analyze, open_upload, render  # noqa: E402
from export.classifier import OnnxClassifier  # noqa: E402
from vit.preprocess import Preprocess, preprocess_image, resize_and_crop  # noqa: E402
from vit.rollout import attention_rollout, raw_attention  # noqa: E402


def build_demo_model(root: Path) -> dict[str, Path]:
    """A tiny ViT trained for a second on the 3-class shapes, saved as project safetensors
    and exported (with its attention output) to ONNX by the project's exporter."""
    from export.cli import ExportOptions, export_checkpoint
    from vit.checkpoint import save_safetensors
    from vit.vit import ViT, ViTConfig

    images = make_image_folder(root / "images", per_class=16)
    spec = Preprocess(crop_size=32, resize_size=32)
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((images / name).glob("*.png")):
            xs.append(preprocess_image(Image.open(path), spec))
            ys.append(label)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_classes=len(CLASSES), dim=32, depth=2, num_heads=2,
                       mlp_ratio=2.0)
    model = ViT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    record = {"config": config.to_dict(), "class_names": list(CLASSES), "preprocess": spec.to_dict(),
              "val_acc": 0.75, "source": "tests: 40 steps on generated shapes"}
    checkpoint = root / "tiny.safetensors"
    save_safetensors(model.eval(), record, checkpoint)
    result = export_checkpoint(checkpoint, root / "tiny.onnx", ExportOptions(attention=True, num_verify=8))
    assert result.passed, result.reports
    return {"onnx": root / "tiny.onnx", "checkpoint": checkpoint, "images": images}


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> dict[str, Path]:
    return build_demo_model(tmp_path_factory.mktemp("demo_model"))


@pytest.fixture(scope="module")
def server(demo_model):
    """The app, launched in-process with the options ``vit-demo`` uses, on a free port."""
    app = build_app(load_backend(demo_model["onnx"]))
    app.queue(**queue_options())
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield app
    finally:
        app.close()


def real_images(demo_model) -> list[Path]:
    return [Path(p) for p in example_images()] + sorted(demo_model["images"].rglob("*.png"))[::8]


def test_examples_are_shipped():
    names = [Path(p).name for p in example_images()]
    assert len(names) >= 6 and "chelsea_cat.jpg" in names
    assert (EXAMPLES_DIR / "SOURCES.md").is_file()
    for p in example_images():
        assert Image.open(p).size >= (32, 32)


def test_prediction_equals_onnx_classifier(demo_model):
    backend = OnnxBackend(demo_model["onnx"])
    reference = OnnxClassifier(demo_model["onnx"])
    for path in real_images(demo_model):
        session = analyze(backend, open_upload({"path": str(path), "orig_name": path.name}))
        [want] = reference.predict(path, top_k=5)
        assert session.analysis.labels == want.labels
        np.testing.assert_allclose(session.analysis.probs, want.probs, rtol=1e-6)
        np.testing.assert_allclose(session.analysis.attention, want.attention, rtol=1e-6)


def test_checkpoint_backend_agrees_and_adds_class_maps(demo_model):
    onnx, ckpt = OnnxBackend(demo_model["onnx"]), TorchBackend(demo_model["checkpoint"])
    assert ckpt.card.class_specific and not onnx.card.class_specific
    image = open_upload(str(example_images()[0]))
    a, b = onnx.analyze(image), ckpt.analyze(image)
    assert a.labels == b.labels
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
    assert b.class_map.shape == ckpt.card.grid and a.class_map is None
    other = ckpt.explain(b.pixels, b.indices[1])
    assert other.shape == ckpt.card.grid and not np.allclose(other, b.class_map)


def test_views_redraw_from_stored_attention(demo_model):
    backend = OnnxBackend(demo_model["onnx"])
    session = analyze(backend, open_upload(str(example_images()[0])))
    weights = session.attention[None]  # (1, L, H, N, N)
    from demo.views import relevance

    got = relevance(backend.card, session, ViewSettings(head_fusion="max", discard_ratio=0.5, start_layer=1))
    np.testing.assert_allclose(got, attention_rollout(weights, head_fusion="max", discard_ratio=0.5,
                                                      start_layer=1)[0])
    got = relevance(backend.card, session, ViewSettings(view=VIEWS[1], layer=0, head="1"))
    np.testing.assert_allclose(got, raw_attention(weights, 0, 1)[0])
    images = {opacity: np.asarray(render(backend.card, session, ViewSettings(opacity=opacity)))
              for opacity in (0.0, 1.0)}
    assert images[0.0].shape == np.asarray(session.photo).shape
    assert not np.array_equal(images[0.0], images[1.0])


def test_crop_box_is_what_the_model_sees():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8))
    for spec in (Preprocess(crop_size=32, resize_size=32), Preprocess(crop_size=224, resize_size=256)):
        box = crop_box(photo.size, spec)
        side = 300 * spec.crop_size / spec.resize_size
        pixel = 451 / spec.resize_size  # one resized pixel, in photo pixels
        np.testing.assert_allclose([box[2] - box[0], box[3] - box[1]], [side, side], atol=pixel)
        np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [225.5, 150], atol=pixel)
        model_view = np.asarray(resize_and_crop(photo, spec), dtype=np.float32)
        ours = np.asarray(photo.crop(tuple(round(v) for v in box)).resize(model_view.shape[:2][::-1],
                                                                          Image.Resampling.BILINEAR))
        assert np.abs(ours - model_view).mean() < 25  # same region (random pixels resample differently)


def test_overlay_opacity_and_outside():
    photo = Image.new("RGB", (40, 20), (200, 100, 50))
    relevance = np.array([[0.0, 1.0], [0.5, 0.2]])
    clear = np.asarray(draw_overlay(photo, relevance, (10, 0, 30, 20), opacity=0.0))
    assert (clear[1:-1, 11:29] == (200, 100, 50)).all()  # inside, opacity 0: the photo
    assert (clear[:, :9] == np.round(np.array([200, 100, 50]) * 0.35)).all()  # outside: dimmed
    full = np.asarray(draw_overlay(photo, relevance, (10, 0, 30, 20), opacity=1.0))
    assert not (full[1:-1, 11:29] == (200, 100, 50)).all(axis=-1).any()


def corrupt_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, format="JPEG")
    files = {"empty": b"", "text": b"this is not an image\n" * 10, "truncated": good.getvalue()[:300]}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    paths["bomb"] = folder / "bomb.png"  # 8000 x 8000 = 64 MP, a few kB on disk
    Image.new("1", (8000, 8000)).save(paths["bomb"])
    return paths


def test_bad_uploads_get_readable_messages(tmp_path):
    paths = corrupt_files(tmp_path)
    expected = {"empty": "empty file", "text": "not an image", "truncated": "truncated or corrupt",
                "bomb": "above the limit"}
    for name, path in paths.items():
        with pytest.raises(UploadError, match=expected[name]) as info:
            open_upload({"path": str(path), "orig_name": path.name})
        assert str(tmp_path) not in str(info.value)  # no server paths in the message


def test_server_survives_bad_uploads(server, demo_model, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.local_url, verbose=False)
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


def test_server_answers_like_the_classifier(server, demo_model):
    from gradio_client import Client, handle_file

    client = Client(server.local_url, verbose=False)
    reference = OnnxClassifier(demo_model["onnx"])
    for path in example_images()[:3]:
        label, original, overlay, _, _ = client.predict(handle_file(path), api_name="/classify")
        [want] = reference.predict(path, top_k=5)
        assert [c["label"] for c in label["confidences"]] == want.labels
        np.testing.assert_allclose([c["confidence"] for c in label["confidences"]], want.probs, rtol=1e-6)
        assert Image.open(original).size == Image.open(overlay).size


def test_concurrent_clients(server):
    """50 requests from 8 clients at once: no errors; latency percentiles are printed."""
    from gradio_client import Client, handle_file

    paths = example_images()
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    clients = [Client(server.local_url, verbose=False) for _ in range(8)]

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


def test_server_serves_no_other_files(server):
    secret = Path(__file__)
    base = server.local_url
    for url in (f"{base}gradio_api/file={secret}", f"{base}gradio_api/file=/etc/passwd",
                f"{base}file=/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code in (403, 404)
    example = example_images()[0]
    with urllib.request.urlopen(f"{server.local_url}gradio_api/file={example}", timeout=10) as response:
        assert response.status == 200


def test_safe_defaults():
    options = launch_options()
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["enable_monitoring"] is False and options["max_file_size"] == "10mb"
    assert options["allowed_paths"] == [str(EXAMPLES_DIR)]
    assert queue_options()["max_size"] > 0


def test_main_without_a_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    import demo.app

    monkeypatch.setattr(demo.app, "DEFAULT_MODEL", tmp_path / "models" / "cifar10_vit.onnx")  # none there
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "vit-train fit --config training/configs/cifar10.yaml" in err and "vit-export" in err
    assert main(["--model", str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert main(["--model", str(tmp_path / "junk.onnx")]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err


def test_translator_flag_is_checked(demo_model, capsys):
    assert main(["--model", str(demo_model["onnx"]), "--translator", "/nonexistent/translator"]) == 2
    assert "--translator" in capsys.readouterr().err


def test_onnx_serving_path_imports_no_torch(demo_model):
    import subprocess
    import sys

    code = ("import sys; from demo.app import build_app; from demo.backend import load_backend; "
            "from demo.views import analyze, open_upload, render, ViewSettings; "
            f"b = load_backend({str(demo_model['onnx'])!r}); build_app(b); "
            f"render(b.card, analyze(b, open_upload({example_images()[0]!r})), ViewSettings()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_api_settings_out_of_range_are_clamped(server):
    from gradio_client import Client, handle_file

    client = Client(server.local_url, verbose=False)
    result = client.predict(handle_file(example_images()[1]), "Raw attention (one layer)", "max", 5.0, -3, 99,
                            "7", 2.0, api_name="/classify")
    assert result[0]["label"] in CLASSES and Path(result[2]).is_file()
