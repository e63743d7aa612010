"""The demo (demo/app.py) in a real browser: Debian's Chromium, headless, driven by Playwright.
The page shows the top-5 classes with percentages, the picture the model was given and maps
large enough to read with their sentence and colour legend; only the chosen map's controls;
one classification per new picture; the whole-image framing; one message for a broken
upload; and, for a model that has them, the class-specific map beside rollout with a working
class picker.

Skipped (not failed) where no browser can be had: install it with
``apt-get install -y chromium`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLASSES, launched

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
expect = sync_api.expect

from demo.app import example_images  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def chromium() -> str | None:
    """The Chromium executable, or ``None``."""
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    executable = chromium()
    if executable is None:
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=FLAGS, viewport={"width": 1400, "height": 1000})
    except Exception as exc:  # a browser that cannot start here is a skip, not a failure
        playwright.stop()
        pytest.skip(f"chromium could not start: {str(exc).splitlines()[0]}")
    try:
        yield context
    finally:
        context.close()
        playwright.stop()


@pytest.fixture(scope="module")
def app_url(demo_server: Any) -> str:
    """The session's demo server (the ONNX model with attention), launched as vit-demo does."""
    return demo_server.local_url


PERCENT = re.compile(r"\d+(\.\d+)?\s?%")
CLASS_NAME = re.compile("|".join(CLASSES))


@pytest.fixture(scope="module")
def torch_app_url(demo_model: dict[str, Path]) -> Iterator[str]:
    """The demo on the checkpoint: PyTorch, with the same class-specific (random-mask) maps."""
    from demo.backend import TorchBackend

    with launched(TorchBackend(demo_model["checkpoint"])) as app:
        yield app.local_url


def open_page(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#input-image input[type=file]").wait_for(state="attached", timeout=60_000)
    return page


def upload(page: Any, path: str | Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def wait_for_new_image(page: Any, selector: str, old: str | None) -> str:
    """Wait until the image under ``selector`` shows a new, loaded picture; its src."""
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel + ' img'); "
                           "return i && i.src !== old && i.complete && i.naturalWidth > 0; }",
                           arg=[selector, old], timeout=60_000)
    return page.locator(f"{selector} img").get_attribute("src")


def classify_runs(page: Any, url: str) -> list[int]:
    """Record the queue submissions of the page's classification events (fn indices of
    classify and classify_example); returns the live list."""
    config = page.evaluate("() => fetch('config').then(r => r.json())")
    wanted = {i for i, d in enumerate(config["dependencies"])
              if d.get("api_name") in ("classify", "classify_example")}
    runs: list[int] = []

    def on_request(request: Any) -> None:
        if "queue/join" in request.url:
            index = json.loads(request.post_data or "{}").get("fn_index")
            if index in wanted:
                runs.append(index)

    page.on("request", on_request)
    return runs


SHOWN = """e => { for (let n = e; n; n = n.parentElement) { const s = getComputedStyle(n);
    if (s.opacity === '0' || s.visibility === 'hidden' || s.display === 'none') return false; }
    return true; }"""


def shown(page: Any, text: str, *, exact: bool = False) -> int:
    """How many elements with ``text`` a person sees (Playwright's visibility counts elements
    kept at opacity 0, such as Gradio's idle error badges)."""
    elements = page.get_by_text(text, exact=exact).all()
    return sum(1 for e in elements if e.is_visible() and e.evaluate(SHOWN))


def photo() -> str:
    return next(p for p in example_images() if p.endswith("chelsea_cat.jpg"))


def test_upload_shows_label_maps_legend_and_model_view(browser_context: Any, app_url: str) -> None:
    """One upload: the top-5 with percentages, the picture the model was given, a map large
    enough to read (at least 400 px wide in a 1400-px window) with its sentence and colour
    legend, words that match the model (this one has a class token), no requests elsewhere."""
    page = browser_context.new_page()
    elsewhere: list[str] = []  # the page must not call out (fonts, analytics, CDNs)
    local = (app_url.rstrip("/"), "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#input-image input[type=file]").wait_for(state="attached", timeout=60_000)
    upload(page, photo())
    label = page.locator("#top5")
    expect(label).to_contain_text(CLASS_NAME, timeout=60_000)
    expect(label).to_contain_text(PERCENT, timeout=30_000)
    text = label.inner_text()
    assert sum(name in text for name in CLASSES) == len(CLASSES)  # all three classes listed with scores
    assert len(PERCENT.findall(text)) >= len(CLASSES), text
    wait_for_new_image(page, "#overlay", None)
    natural = page.evaluate("() => { const i = document.querySelector('#overlay img'); "
                            "return [i.naturalWidth, i.naturalHeight]; }")
    assert natural[0] >= 300 and natural[1] > 0, natural  # the display copy, not the 32x32 input
    box = page.locator("#overlay img").bounding_box()
    assert box is not None and box["width"] >= 400 and box["height"] >= 250, box  # large enough to read
    seen = wait_for_new_image(page, "#model-view", None)
    assert seen and page.locator("#model-view img").bounding_box()["width"] >= 120
    # each map says what it means, with a colour legend; the words match the model
    note = page.locator("#map-note")
    expect(note).to_contain_text("Contribution rollout")  # the default where the file gives it
    expect(note).to_contain_text("information in the class token")
    expect(note.locator(".legend .bar").first).to_be_visible()
    assert "gradient" in (note.locator(".legend .bar").first.get_attribute("style") or "")
    expect(page.locator("#header")).to_contain_text("answers from its class token")
    expect(page.locator("#class-note")).to_contain_text("raise (red)")  # RISE: from the file alone
    expect(page.locator("#framing-note")).to_contain_text("Centre crop")
    assert not elsewhere, elsewhere
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    page.close()


def test_only_the_chosen_maps_controls_show(browser_context: Any, app_url: str) -> None:
    page = open_page(browser_context, app_url)
    upload(page, photo())
    before = wait_for_new_image(page, "#overlay", None)
    page.get_by_text("Map settings").click()
    rollout, raw = page.locator("#rollout-controls"), page.locator("#raw-controls")
    expect(rollout).to_be_hidden()  # contribution rollout, the default, has no controls
    expect(raw).to_be_hidden()
    page.get_by_label("Attention rollout").check()
    expect(rollout).to_be_visible(timeout=30_000)
    expect(page.locator("#map-note")).to_contain_text("Abnar")
    attention_map = wait_for_new_image(page, "#overlay", before)
    assert attention_map != before  # redrawn from the stored attention
    page.get_by_label("One layer's attention").check()
    expect(raw).to_be_visible(timeout=30_000)
    expect(rollout).to_be_hidden()
    expect(page.locator("#map-note")).to_contain_text("One layer's attention")
    assert wait_for_new_image(page, "#overlay", attention_map) != attention_map
    page.close()


def test_a_new_picture_is_classified_once(browser_context: Any, app_url: str) -> None:
    """Upload, upload another over it, click an example: one classification each (a
    replacement fired the model twice before)."""
    page = open_page(browser_context, app_url)
    runs = classify_runs(page, app_url)
    upload(page, photo())
    first = wait_for_new_image(page, "#overlay", None)
    rocket = next(p for p in example_images() if p.endswith("rocket_launch.jpg"))
    upload(page, rocket)
    second = wait_for_new_image(page, "#overlay", first)
    page.wait_for_timeout(2_000)  # time for a second run to show itself
    assert len(runs) == 2, runs
    page.locator(".gallery-item, button.gallery-item").first.click()
    wait_for_new_image(page, "#overlay", second)
    page.wait_for_timeout(2_000)
    assert len(runs) == 3, runs
    page.close()


def test_whole_image_framing_changes_what_the_model_sees(browser_context: Any, app_url: str) -> None:
    page = open_page(browser_context, app_url)
    upload(page, photo())
    seen = wait_for_new_image(page, "#model-view", None)
    page.get_by_label("Whole image (padded to a square)").check()
    padded = wait_for_new_image(page, "#model-view", seen)
    assert padded != seen
    expect(page.locator("#top5")).to_contain_text(PERCENT)
    page.close()


def test_broken_upload_shows_one_message(browser_context: Any, app_url: str, tmp_path: Path) -> None:
    """A broken file over a classified picture: its message once (no error badges on the
    outputs), and the old answer gone."""
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page = open_page(browser_context, app_url)
    upload(page, photo())
    expect(page.locator("#top5")).to_contain_text(PERCENT, timeout=60_000)
    upload(page, broken)
    message = page.get_by_text("Cannot use 'holiday.jpg'").first
    expect(message).to_be_visible(timeout=60_000)
    page.wait_for_timeout(2_000)
    assert shown(page, "Cannot use 'holiday.jpg'") == 1
    assert shown(page, "Error", exact=True) == 1  # the message's own title; no badge on every output
    assert not PERCENT.search(page.locator("#top5").inner_text())  # the cat's answer is gone
    page.close()


@pytest.mark.parametrize("served", ["app_url", "torch_app_url"])
def test_class_map_beside_rollout_with_a_working_picker(browser_context: Any, served: str,
                                                        request: pytest.FixtureRequest) -> None:
    """Both model types (the ONNX file, without torch, and the checkpoint): the map of the top
    class beside rollout, as large, with its sentence and legend; picking another class
    redraws it."""
    page = open_page(browser_context, request.getfixturevalue(served))
    upload(page, photo())
    rollout = wait_for_new_image(page, "#overlay", None)
    class_map = wait_for_new_image(page, "#class-overlay", None)
    assert rollout and class_map
    a, b = page.locator("#overlay img").bounding_box(), page.locator("#class-overlay img").bounding_box()
    assert abs(a["y"] - b["y"]) < 5 and b["x"] > a["x"] + a["width"] - 5  # side by side
    assert min(a["width"], b["width"]) >= 400, (a, b)
    top = page.locator("#top5 .output-class, #top5 h2").first.inner_text().strip()
    assert top in CLASSES
    expect(page.locator("#class-choice input")).to_have_value(top)
    note = page.locator("#class-note")
    expect(note).to_contain_text("raise (red)")
    expect(note.locator(".legend .bar")).to_be_visible()
    other = next(c for c in CLASSES if c != top)
    page.locator("#class-choice input").click()
    page.get_by_role("option", name=other).click()
    assert wait_for_new_image(page, "#class-overlay", class_map) != class_map
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"demo_browser_class_map_{served}.png"), full_page=True)
    page.close()
