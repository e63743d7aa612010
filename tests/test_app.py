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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, REPO, corrupt_files, launched
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from demo.app import (  # noqa: E402
    EXAMPLES_DIR,
    _settings,
    build_app,
    example_captions,
    example_images,
    launch_options,
    main,
    model_panel,
    queue_options,
)
from demo.backend import OnnxBackend, TorchBackend  # noqa: E402
from demo.views import VIEWS, ViewSettings, analyze, open_upload, render  # noqa: E402
from export.onnx_classifier import OnnxClassifier  # noqa: E402


def test_examples_are_shipped_captioned_and_not_training_images() -> None:
    """The examples are photos the shipped model never trained on: none is a byte copy of an
    image of the project's CIFAR-10 training folder, and each has a caption on the page."""
    import hashlib

    names = [Path(p).name for p in example_images()]
    assert len(names) >= 2 and "chelsea_cat.jpg" in names and not any(n.startswith("cifar10_") for n in names)
    captions = example_captions()
    for p in example_images():
        assert Image.open(p).size >= (32, 32)
        assert f"**{Path(p).name}**:" in captions
    train = REPO.parent / "shared" / "data" / "cifar10" / "train"
    if not train.is_dir():
        pytest.skip(f"no training folder at {train} to compare with")
    sizes = {Path(p).stat().st_size: hashlib.sha256(Path(p).read_bytes()).hexdigest()
             for p in example_images()}
    copies = [f for f in train.rglob("*.jpg") if f.stat().st_size in sizes
              and hashlib.sha256(f.read_bytes()).hexdigest() == sizes[f.stat().st_size]]
    assert not copies, copies


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
        label, seen, overlay, _, _ = client.predict(handle_file(path), api_name="/classify")
        [want] = reference.predict(path, top_k=5)
        assert [c["label"] for c in label["confidences"]] == want.labels
        np.testing.assert_allclose([c["confidence"] for c in label["confidences"]], want.scores, rtol=1e-6)
        session = analyze(OnnxBackend(demo_model["onnx"]), open_upload(path))
        assert Image.open(overlay).size == session.photo.size
        assert Image.open(seen).size == (256, 256)  # the 32x32 input, 8x


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
        label, _, overlay, _, _ = client.predict(handle_file(path), "crop", *controls, api_name="/classify")
        assert label["label"] in CLASSES
        drawn[view] = np.asarray(Image.open(overlay).convert("RGB"))
        np.testing.assert_array_equal(drawn[view], np.asarray(render(card, session, clamped)))
    assert not np.array_equal(drawn[VIEWS[0]], drawn[VIEWS[1]])
    # in range, the settings are used as sent: a different picture from the clamped one
    inside = ViewSettings(view=VIEWS[1], layer=0, head="0", opacity=0.5)
    _, _, overlay, _, _ = client.predict(handle_file(path), "crop", VIEWS[1], "mean", 0.0, 0, 0, "0", 0.5,
                                         api_name="/classify")
    np.testing.assert_array_equal(np.asarray(Image.open(overlay).convert("RGB")),
                                  np.asarray(render(card, session, inside)))
    assert not np.array_equal(np.asarray(render(card, session, inside)), drawn[VIEWS[1]])


def test_model_panel_describes_the_model(demo_model: dict[str, Path]) -> None:
    card = OnnxBackend(demo_model["onnx"]).card
    onnx = model_panel(card)
    assert "`tiny.onnx`" in onnx and f"**Runs on:** {card.runtime}" in onnx
    assert "circle, square, stripes" in onnx
    assert "2 layers x 2 heads" in onnx and "grid 4x4 + class token" in onnx and "75.00%" in onnx
    assert "contribution rollout, attention rollout and one layer's attention" in onnx
    assert ("class-specific" in onnx) == card.class_specific
    torch_panel = model_panel(TorchBackend(demo_model["checkpoint"]).card)
    assert "PyTorch" in torch_panel and "class-specific: how much higher the class's score is" in torch_panel


def test_page_text_matches_the_model(demo_model: dict[str, Path]) -> None:
    """The sentences come from the model's card: a class-token model 'answers from its class
    token', an average-pooling one from 'the average of its N patch tokens (it has no class
    token)'; the framing note gives the model's input size."""
    from dataclasses import replace

    from demo.look import class_note, framing_note, header, map_note

    card = OnnxBackend(demo_model["onnx"]).card
    assert "answers from its class token" in header(card) and "32×32" in header(card)
    assert "information in the class token" in map_note(card, VIEWS[0])
    avg = replace(card, num_prefix_tokens=0, pool="avg", grid=(8, 8))
    text = header(avg) + map_note(avg, VIEWS[0]) + map_note(avg, VIEWS[1])
    assert "the average of its 64 patch tokens (it has no class token)" in text
    assert "class token drew" not in text and "information in the tokens the model averages" in text
    registers = replace(avg, num_prefix_tokens=4, reg_tokens=4)  # the recipe's layout (#19)
    assert "64 patch tokens (it has no class token; its 4 registers are left out)" in header(registers)
    assert "no class token, 4 registers, avg pooling" in model_panel(registers)
    assert "32×32 square" in framing_note(card) and "Centre crop" in framing_note(card)
    assert "No class-specific map" in class_note(replace(card, class_specific=False))
    assert "raise (red)" in class_note(replace(card, class_specific=True, class_method="a method"))


def test_app_events_have_api_names_and_the_translate_tab(demo_model: dict[str, Path], toy_onnx: Path) -> None:
    backend = OnnxBackend(demo_model["onnx"])
    dependencies = build_app(backend).config["dependencies"]
    names = {dep.get("api_name") for dep in dependencies}
    assert {"classify", "redraw", "explain", "load_example", "predict", "predict_batch"} <= names
    assert "translate" not in names
    unnamed = [dep for dep in dependencies if not dep.get("api_name")]
    assert not unnamed, unnamed
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
    assert [p["parameter_name"] for p in info["/predict"]["parameters"]] == ["image", "top_k", "framing"]
    assert [p["parameter_name"] for p in info["/predict_batch"]["parameters"]] == [
        "images", "top_k", "framing"]
    assert [p["parameter_name"] for p in info["/classify"]["parameters"]] == [
        "image", "framing", "view", "head_fusion", "discard_ratio", "start_layer", "layer", "head", "opacity"]
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
    # /classify: plain data, no {'__type__': 'update'} records
    empty = client.predict(None, api_name="/classify")
    assert "__type__" not in str(empty) and "__type__" not in str(client.predict(handle_file(path),
                                                                                 api_name="/classify"))


def test_framing_through_the_api(demo_server: gr.Blocks, demo_model: dict[str, Path], tmp_path: Path) -> None:
    """framing="fit" classifies the whole picture padded to a square (the page's 'Whole
    image'): the answer equals the classifier's on that framed input, and differs from the
    centre crop's for a wide picture whose sides decide the class."""
    from gradio_client import Client, handle_file

    from demo.overlay import frame

    wide = Image.new("RGB", (96, 32), "white")
    for kind, left in (("stripes", 0), ("square", 64)):
        first = sorted((demo_model["images"] / kind).glob("*.png"))[0]
        wide.paste(Image.open(first).convert("RGB").resize((32, 32)), (left, 0))
    path = tmp_path / "wide.png"
    wide.save(path)
    client = Client(demo_server.local_url, verbose=False)
    reference = OnnxClassifier(demo_model["onnx"])
    answers = {}
    for framing in ("crop", "fit"):
        got = client.predict(image=handle_file(str(path)), top_k=3, framing=framing, api_name="/predict")
        [want] = reference.predict(frame(wide, framing, reference.info.preprocess).model_input, top_k=3)
        assert [p["label"] for p in got["predictions"]] == want.labels
        np.testing.assert_allclose([p["score"] for p in got["predictions"]], want.scores, rtol=1e-6)
        answers[framing] = [p["score"] for p in got["predictions"]]
    assert answers["crop"] != answers["fit"]
    _, seen, overlay, _, _ = client.predict(handle_file(str(path)), "fit", api_name="/classify")
    seen = np.asarray(Image.open(seen).convert("RGB"))
    assert seen.shape == (256, 256, 3) and (seen[:40] != 255).any(axis=-1).all()  # padding above, not white


def test_errors_through_the_api_carry_their_message(demo_server: gr.Blocks) -> None:
    """Every refusal a script can meet says what was wrong, never 'has not enabled verbose
    error reporting'; a path to another file on the server is refused unread."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_server.local_url, verbose=False)
    cat = handle_file(example_images()[0])
    cases = [
        (dict(image=cat, top_k="abc", api_name="/predict"), "top_k must be a whole number from 1 to 3"),
        (dict(image=cat, top_k=2.5, api_name="/predict"), "top_k must be a whole number"),
        (dict(image=cat, framing="zoom", api_name="/predict"), "framing must be 'crop' or 'fit'"),
        (dict(image=None, api_name="/predict"), "No image received"),
        (dict(image={"path": "/etc/passwd"}, api_name="/predict"), "not a file sent to this server"),
        (dict(images=None, api_name="/predict_batch"), "images must be a list of files"),
        (dict(images=[cat], top_k="x", api_name="/predict_batch"), "top_k must be a whole number"),
        (dict(image=cat, framing="zoom", api_name="/classify"), "framing must be 'crop' or 'fit'"),
        (dict(image={"path": "/etc/hostname"}, api_name="/classify"), "not a file sent to this server"),
    ]
    for kwargs, message in cases:
        with pytest.raises(AppError) as info:
            client.predict(**kwargs)
        text = str(info.value)
        assert message in text and "verbose error reporting" not in text, (kwargs, text)


def test_api_page_examples_run_as_shown(demo_server: gr.Blocks) -> None:
    """Every endpoint the API page documents, called with the example values the page shows
    (a shipped example file, not a picture on another site or a bare '...'), answers."""
    from gradio_client import Client, handle_file

    def shown(value: object) -> object:  # what the page's Python snippet passes
        if isinstance(value, dict) and value.get("meta", {}).get("_type") == "gradio.FileData":
            assert value["url"] == value["path"] and Path(value["url"]).is_file(), value
            return handle_file(value["url"])
        return [shown(v) for v in value] if isinstance(value, list) else value

    client = Client(demo_server.local_url, verbose=False)
    endpoints = client.view_api(return_format="dict")["named_endpoints"]
    assert {"/predict", "/predict_batch", "/classify", "/redraw"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        kwargs = {p["parameter_name"]: shown(p["example_input"]) for p in endpoint["parameters"]}
        assert "..." not in str(kwargs), (name, kwargs)
        result = client.predict(**kwargs, api_name=name)
        if name in ("/predict", "/classify", "/explain"):
            assert result, (name, result)


@pytest.fixture(scope="module")
def torch_demo_server(demo_model: dict[str, Path]) -> Iterator[gr.Blocks]:
    """The demo on the checkpoint (PyTorch, the same random-mask class maps), launched as vit-demo does."""
    with launched(TorchBackend(demo_model["checkpoint"])) as app:
        yield app


def test_explain_gives_any_class_of_every_model_type(demo_server: gr.Blocks,
                                                     torch_demo_server: gr.Blocks) -> None:
    """/explain: the class-specific map of any class, through the API, for every served model
    type (random masks, from the checkpoint or the ONNX file alone). It takes
    the image itself, or explains the session's last /classify; the map changes with the class."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    path = example_images()[0]
    for server in (torch_demo_server, demo_server):
        client = Client(server.local_url, verbose=False)
        label, _, _, class_map, chosen = client.predict(handle_file(path), api_name="/classify")
        if class_map is None:  # an ONNX file without class maps: /explain (undocumented) says so
            documented = client.view_api(return_format="dict")["named_endpoints"]
            assert chosen is None and "/explain" not in documented
            with pytest.raises(AppError, match="offers no class-specific map"):
                client.predict(handle_file(path), CLASSES[0], "crop", 0.5, api_name="/explain")
            continue
        assert chosen == label["label"]
        maps = {}
        for name in CLASSES:
            drawn = client.predict(image=handle_file(path), label=name, api_name="/explain")
            maps[name] = np.asarray(Image.open(drawn).convert("RGB"))
            assert maps[name].shape == np.asarray(Image.open(class_map)).shape[:2] + (3,)
        assert len({m.tobytes() for m in maps.values()}) == len(CLASSES)  # one map per class
        again = client.predict(image=None, label=CLASSES[1], api_name="/explain")  # the session's image
        np.testing.assert_array_equal(np.asarray(Image.open(again).convert("RGB")), maps[CLASSES[1]])
        with pytest.raises(AppError, match="Unknown class 'dog'"):
            client.predict(image=handle_file(path), label="dog", api_name="/explain")
        fresh = Client(server.local_url, verbose=False)
        with pytest.raises(AppError, match="No image received"):
            fresh.predict(image=None, label=CLASSES[0], api_name="/explain")


def test_backend_and_precision_flags(demo_model: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    """vit-demo --backend/--precision/--provider (export.backends.add_runtime_arguments, as
    vit-predict's): choices checked by the parser, refused for a checkpoint with one line."""
    for argv in (["--backend", "tensorflow"], ["--precision", "int4"]):
        with pytest.raises(SystemExit) as info:
            main(["--model", str(demo_model["onnx"]), *argv])
        assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    for argv in (["--backend", "openvino"], ["--provider", "cuda"]):
        assert main(["--model", str(demo_model["checkpoint"]), *argv]) == 2
        assert "--backend, --precision and --provider apply to .onnx files" in capsys.readouterr().err


def test_an_onnx_file_with_class_maps_gets_them_on_the_page_and_through_explain(
        demo_model: dict[str, Path]) -> None:
    """The ONNX path serves class-specific maps from the file alone (OnnxClassifier.class_map,
    #19): the card says so, /classify answers the top class's map, /explain (documented) any
    class's, each exactly the classifier's map for that class, drawn."""
    from gradio_client import Client, handle_file

    from demo.views import render_class_map

    backend = OnnxBackend(demo_model["onnx"])
    assert backend.card.class_specific and "RISE" in backend.card.class_method
    with launched(backend) as app:
        client = Client(app.local_url, verbose=False)
        assert "/explain" in client.view_api(return_format="dict")["named_endpoints"]
        path = example_images()[0]
        label, _, _, class_map, chosen = client.predict(handle_file(path), api_name="/classify")
        assert chosen == label["label"]
        session = analyze(backend, open_upload(path))
        pixels = session.analysis.pixels
        want = render_class_map(session, backend.classifier.class_map(pixels, CLASSES.index(chosen)), 0.5)
        np.testing.assert_array_equal(np.asarray(Image.open(class_map).convert("RGB")), np.asarray(want))
        other = next(c for c in CLASSES if c != chosen)
        drawn = client.predict(image=handle_file(path), label=other, api_name="/explain")
        want = render_class_map(session, backend.classifier.class_map(pixels, CLASSES.index(other)), 0.5)
        np.testing.assert_array_equal(np.asarray(Image.open(drawn).convert("RGB")), np.asarray(want))
