"""Headless Chromium through the "Compose & compare" tab: a composed query (Enter in the modifier),
a heat-map on a clicked result, and the frozen-vs-fine-tuned view. Screenshots go to
``$CXR_SCREENSHOTS`` (default: the test's temp folder); the README's come from
``CXR_COMPOSE_DEMO=full CXR_SCREENSHOTS=assets pytest tests/test_browser_compose.py``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.test_browser import page  # noqa: F401 (the same headless Chromium page fixture)

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def served(request, demo_app_url):
    """(url, a phantom to upload): the session's app on the full demo (conftest), shared with test_app_e2e and
    test_load; a 40-study demo phantom by default, a normal film of the full demo for the README's screenshots."""
    if os.environ.get("CXR_COMPOSE_DEMO") != "full":
        data = request.getfixturevalue("small_demo")[0]
        yield demo_app_url, sorted((data / "images").glob("*.png"))[0]
        return
    from index.engine import SearchEngine

    engine = SearchEngine.load(request.getfixturevalue("demo_built")[1], None)
    normal = engine.store.get([int(engine.store.matching_ids(label=0)[3])])[0]
    yield demo_app_url, Path(engine.resolve_path(normal.image_path))


def test_composed_query_heatmap_and_side_by_side(page, served, tmp_path):
    url, image = served
    shots = Path(os.environ.get("CXR_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    upload = tmp_path / "query.png"
    shutil.copy(image, upload)

    page.goto(url)
    page.get_by_role("tab", name="Compose & compare").click()
    page.locator("#compose-upload input[type=file]").set_input_files(str(upload))
    page.wait_for_timeout(1500)  # the upload lands on the server
    modifier = page.locator("#compose-modifier textarea, #compose-modifier input").first
    modifier.fill("left pleural effusion")
    modifier.press("Enter")  # Enter searches (the textbox's submit event)
    page.get_by_text("for image with").first.wait_for(timeout=120_000)
    page.locator("#compose-gallery img").first.wait_for(timeout=60_000)
    assert page.locator("#compose-gallery img").count() >= 5
    why = page.locator("#compose-why")
    assert "Why these matches" in why.inner_text() and "left pleural effusion" in why.inner_text()
    page.screenshot(path=str(shots / "compose.png"), full_page=True)

    page.locator("#compose-gallery img").first.click()  # a result: its heat-map
    page.get_by_text("Red: regions of the query").first.wait_for(timeout=120_000)
    assert "Hit #1" in page.locator("#heatmap-caption").inner_text()
    page.locator("#heatmap img").first.wait_for(timeout=30_000)
    page.keyboard.press("Escape")  # close the gallery's preview
    page.locator("#heatmap").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "heatmap.png"), full_page=True)

    page.locator("#compose-compare input[type=checkbox]").check()
    page.get_by_text("Overlap:").first.wait_for(timeout=120_000)
    page.locator("#frozen-gallery img").first.wait_for(timeout=60_000)
    assert page.locator("#frozen-gallery img").count() >= 5
    assert "studies are in both top-" in page.locator("#compose-compare-summary").inner_text()
    page.screenshot(path=str(shots / "side_by_side.png"), full_page=True)
