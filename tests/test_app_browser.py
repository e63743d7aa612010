"""The demo (demo/app.py) in a real browser: Debian's Chromium, headless, driven by Playwright.
The page shows the top-5 classes with percentages and the overlay image, redraws the map when
a control changes, and shows a message for a broken upload.

Skipped (not failed) where no browser can be had: install it with
``apt-get install -y chromium`` (``.ci/run`` does).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLASSES

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


def test_upload_shows_label_and_overlay(browser_context: Any, app_url: str) -> None:
    page = browser_context.new_page()
    elsewhere: list[str] = []  # the page must not call out (fonts, analytics, CDNs)
    local = (app_url.rstrip("/"), "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(local) else elsewhere.append(r.url))
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#input-image input[type=file]").wait_for(state="attached", timeout=60_000)
    photo = next(p for p in example_images() if p.endswith("chelsea_cat.jpg"))
    page.locator("#input-image input[type=file]").set_input_files(photo)
    # the top-5 element names the classes with their percentages
    label = page.locator("#top5")
    expect(label).to_contain_text(CLASS_NAME, timeout=60_000)
    expect(label).to_contain_text(PERCENT, timeout=30_000)
    text = label.inner_text()
    assert CLASS_NAME.search(text) and PERCENT.search(text), text
    assert sum(name in text for name in CLASSES) == len(CLASSES)  # all three classes listed with scores
    assert len(PERCENT.findall(text)) >= len(CLASSES), text
    # the photo and the overlay appear, the overlay as the display copy, not the 32x32 model input
    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible(timeout=60_000)
    page.wait_for_function("() => { const i = document.querySelector('#overlay img'); "
                           "return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    natural = page.evaluate("() => { const i = document.querySelector('#overlay img'); "
                            "return [i.naturalWidth, i.naturalHeight]; }")
    assert natural[0] >= 300 and natural[1] > 0, natural
    box = overlay.bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0, box
    expect(page.locator("#original img")).to_be_visible()
    # a map control redraws the overlay from the stored attention
    before = overlay.get_attribute("src")
    page.get_by_label("Raw attention (one layer)").check()
    page.wait_for_function("(old) => { const i = document.querySelector('#overlay img'); "
                           "return i && i.src !== old && i.complete && i.naturalWidth > 0; }",
                           arg=before, timeout=30_000)
    assert overlay.get_attribute("src") != before
    assert not elsewhere, elsewhere
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo_browser.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    page.close()


def test_broken_upload_shows_a_message(browser_context: Any, app_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page = browser_context.new_page()
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    upload = page.locator("#input-image input[type=file]")
    upload.wait_for(state="attached", timeout=60_000)
    upload.set_input_files(str(broken))
    message = page.get_by_text("Cannot use 'holiday.jpg'").first
    expect(message).to_be_visible(timeout=60_000)
    assert "Cannot use 'holiday.jpg'" in message.inner_text()
    assert not PERCENT.search(page.locator("#top5").inner_text())  # nothing was classified
    page.close()
