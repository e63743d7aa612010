"""The demo in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped (not failed) where no browser can be had: install it with
``apt-get install -y chromium`` (``.ci/run`` does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import CLASSES

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from test_demo import build_demo_model  # noqa: E402

from demo.app import build_app, example_images, launch_options, queue_options  # noqa: E402
from demo.backend import load_backend  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
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
def app_url(tmp_path_factory):
    model = build_demo_model(tmp_path_factory.mktemp("browser_model"))
    app = build_app(load_backend(model["onnx"]))
    app.queue(**queue_options())
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield app.local_url
    finally:
        app.close()


def test_upload_shows_label_and_overlay(browser_context, app_url):
    page = browser_context.new_page()
    elsewhere: list[str] = []  # the page must not call out (fonts, analytics, CDNs)
    local = (app_url.rstrip("/"), "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#input-image input[type=file]").wait_for(state="attached", timeout=60_000)
    photo = next(p for p in example_images() if p.endswith("chelsea_cat.jpg"))
    page.locator("#input-image input[type=file]").set_input_files(photo)
    label = page.locator("#top5")
    label.get_by_text(CLASSES[0]).or_(label.get_by_text(CLASSES[1])).or_(label.get_by_text(CLASSES[2])) \
        .first.wait_for(timeout=60_000)
    overlay = page.locator("#overlay img")
    overlay.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("() => { const i = document.querySelector('#overlay img'); "
                           "return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    assert page.locator("#original img").is_visible()
    text = label.inner_text()
    assert sum(name in text for name in CLASSES) == len(CLASSES)  # all three classes listed with scores
    size = page.evaluate("() => document.querySelector('#overlay img').naturalWidth")
    assert size >= 300  # the display copy, not the 32x32 model input
    # a map control redraws the overlay from the stored attention
    before = overlay.get_attribute("src")
    page.get_by_label("Raw attention (one layer)").check()
    page.wait_for_function("(old) => { const i = document.querySelector('#overlay img'); "
                           "return i && i.src !== old && i.complete && i.naturalWidth > 0; }",
                           arg=before, timeout=30_000)
    assert not elsewhere, elsewhere
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    page.close()


def test_broken_upload_shows_a_message(browser_context, app_url, tmp_path):
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page = browser_context.new_page()
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    upload = page.locator("#input-image input[type=file]")
    upload.wait_for(state="attached", timeout=60_000)
    upload.set_input_files(str(broken))
    page.get_by_text("Cannot use 'holiday.jpg'").first.wait_for(timeout=60_000)
    page.close()
