"""A person's path through the app in headless Chromium: upload, see results, switch tabs."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def app_url(demo_app_url):
    return demo_app_url  # the session's app on the full demo (conftest), shared with tests/test_app_e2e.py


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def test_upload_search_switch_tabs_and_screenshot(page, app_url, pediatric_films, tmp_path):
    shots = Path(os.environ.get("CXR_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.goto(app_url)
    page.get_by_text("Chest X-ray retrieval").first.wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(pediatric_films[0]))
    # the answer's status line ("8 similar studies from 3,955 candidates."), not the page's disclaimer, which also
    # says "similar studies from"
    page.get_by_text(re.compile(r"similar studies from [\d,]+ candidates")).first.wait_for(timeout=120_000)
    page.wait_for_function("document.querySelectorAll('img').length >= 6", timeout=60_000)
    # a real film against the phantom index: the verdict beside the preview and the warning above the results
    badge = page.locator("[data-verdict='unlike_index']").first
    badge.wait_for(timeout=30_000)
    assert badge.is_visible() and "Unlike the indexed studies" in badge.inner_text()
    assert page.get_by_text("estimate is withheld").first.is_visible()
    assert page.get_by_text("Closest reports").first.is_visible()
    assert page.locator(".cxr-card").count() >= 5
    page.screenshot(path=str(shots / "image_search.png"), full_page=True)

    page.get_by_role("tab", name="Search by text").click()
    phrase = page.get_by_label("Findings phrase")
    phrase.click()
    phrase.press_sequentially("small left pleural effusion")
    phrase.press("Enter")  # Enter searches (no button click)
    page.get_by_text("radiographs from").first.wait_for(timeout=60_000)
    assert phrase.input_value() == "small left pleural effusion"  # no newline typed by that Enter
    phrase.press("Shift+Enter")  # Shift+Enter adds a line instead
    assert phrase.input_value() == "small left pleural effusion\n"
    assert page.locator(".cxr-card mark").count() >= 1
    page.screenshot(path=str(shots / "text_search.png"), full_page=True)

    page.get_by_role("tab", name="Embedding map").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() == 2
    page.screenshot(path=str(shots / "embedding_map.png"), full_page=True)

    page.get_by_role("tab", name="Model").click()
    page.get_by_text("not a medical device").first.wait_for(timeout=10_000)
    page.screenshot(path=str(shots / "model.png"), full_page=True)


def test_a_photo_is_refused_with_a_visible_reason(page, app_url, tmp_path):
    from data.probes import non_radiographs

    photo = tmp_path / "cat.png"
    photo.write_bytes(dict(non_radiographs())["skimage:chelsea"])
    page.goto(app_url)
    page.get_by_text("Chest X-ray retrieval").first.wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(photo))
    any_badge = page.locator("[data-verdict]").first
    any_badge.wait_for(timeout=120_000)  # whichever verdict comes, so a wrong one fails with its text
    badge = page.locator("[data-verdict='not_radiograph']").first
    assert badge.count() == 1 and badge.is_visible(), f"verdict shown: {any_badge.inner_text()!r}"
    assert "Not a chest radiograph" in badge.inner_text()
    assert page.get_by_text("No search was run").first.is_visible()
    assert page.locator(".cxr-card").count() == 0
    page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
