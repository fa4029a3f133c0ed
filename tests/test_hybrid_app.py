"""Hybrid text search in the running app (issue 23 §3-4): the /search_text API's added side and mode
parameters (old callers unchanged), and the parse chips and side filter in headless
Chromium. The demo index's reports make hybrid the default."""
from __future__ import annotations

import pytest

from data.findings import LEFT, RIGHT
from tests.app_server import gradio_client
from tests.test_browser import page  # noqa: F401  (the headless Chromium fixture)

pytestmark = pytest.mark.slow
QUERY = "small left pleural effusion"


@pytest.fixture(scope="module")
def app_url(demo_app_url):
    return demo_app_url  # the session's app on the full demo (conftest): these tests only query it


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client(app_url)


def effusion_sides(records) -> list[frozenset[str] | None]:
    """Per hit, the sides its tags give a pleural effusion (None: no effusion); the truth, not the ranking's input."""
    out = []
    for hit in records["hits"]:
        sides = [f["side"] for f in hit["structured_findings"] if f["name"] == "pleural effusion" and f["certainty"] == "positive"]
        out.append(None if not sides else frozenset(s for side in sides for s in ((LEFT, RIGHT) if side == "bilateral" else (side,)) if s))
    return out


def test_api_parameters_keep_their_order_and_mode_is_last(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/search_text"]["parameters"]
    assert [p["label"] for p in params] == ["Findings phrase", "Number of results (k)", "Label", "View", "Finding",
                                            "Side", "Search mode"]
    assert params[-1]["parameter_default"] == "hybrid"  # the app's default: this index has reports


def test_old_callers_get_hybrid_and_the_left_effusions(client):
    _, _, status, records = client.predict(QUERY, 8, "any", "any", "any", api_name="/search_text")
    assert records["mode"] == "hybrid" and "(hybrid search)" in status
    assert all("channels" in h and "tags" in h for h in records["hits"])
    sides = effusion_sides(records)
    left_or_bilateral = sum(bool(s and LEFT in s) for s in sides)
    left_only = sum(s == frozenset({LEFT}) for s in sides)
    right_only = sum(s == frozenset({RIGHT}) for s in sides)
    print(f"\n{QUERY!r} hybrid top 8: {left_or_bilateral} left or bilateral, {left_only} left only, {right_only} right only")
    assert left_or_bilateral >= 6 and left_only >= 4 and right_only == 0


def test_mode_and_side_on_the_api(client):
    _, _, status, records = client.predict(QUERY, 6, "any", "any", "any", "any", "dense", api_name="/search_text")
    assert records["mode"] == "dense" and all(h["channels"] == ["dense"] for h in records["hits"])
    _, _, status, records = client.predict("pleural effusion", 6, "any", "any", "any", "right", "hybrid",
                                           api_name="/search_text")
    assert records["hits"] and all(s and RIGHT in s for s in effusion_sides(records)), status
    _, _, status, _ = client.predict("zebra crossing", 4, "any", "any", "any", "any", "hybrid", api_name="/search_text")
    assert "image similarity alone" in status and "(dense search)" in status
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):  # gradio checks the mode against its choices
        client.predict(QUERY, 4, "any", "any", "any", "any", "sparse", api_name="/search_text")


# `--text-mode dense` (the API's default becomes dense, hybrid still on request) is checked on the app that
# tests/test_bundle.py::test_app_serves_a_bundle_folder_and_refuses_a_hub_id_offline starts: one start, not two.


@pytest.mark.browser
def test_parse_chips_and_side_filter_in_the_browser(page, app_url):  # noqa: F811
    page.goto(app_url)
    page.get_by_text("Chest X-ray retrieval").first.wait_for(timeout=60_000)
    page.get_by_role("tab", name="Search by text").click()
    phrase = page.get_by_label("Findings phrase")
    phrase.fill("small left pleural effusion, no pneumothorax")
    phrase.press("Enter")
    chips = page.locator("[data-testid='parse-chips'] .cxr-chip")
    chips.first.wait_for(timeout=60_000)
    assert chips.all_inner_texts() == ["pleural effusion · left · small", "excluding pneumothorax"]
    page.get_by_text("(hybrid search)").first.wait_for(timeout=60_000)
    assert page.get_by_text("report says").first.is_visible()
    # the side filter (under Filters): right only, for the phrase's finding
    page.get_by_text("Filters").nth(1).click()
    side = page.locator("#side-filter input")
    side.click()
    page.get_by_role("option", name="right", exact=True).click()
    phrase.fill("pleural effusion")
    phrase.press("Enter")
    page.locator("[data-testid='parse-chips'] .cxr-chip", has_text="pleural effusion").first.wait_for(timeout=60_000)
    page.get_by_text("(hybrid search)").first.wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    tags = page.locator(".cxr-card .cxr-tags").all_inner_texts()
    assert tags and all("Pleural Effusion" in t and ("right" in t.lower() or "bilateral" in t.lower()) for t in tags), tags
    # a phrase the parser cannot read: the chip says it ran dense
    phrase.fill("zebra crossing")
    phrase.press("Enter")
    page.get_by_text("image similarity only").first.wait_for(timeout=60_000)
