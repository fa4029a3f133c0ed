"""End to end: the real app on a loopback port, called through its named API endpoints."""
from __future__ import annotations


import pytest
from gradio_client import handle_file

from tests.app_server import gradio_client
from webapp.presenters import OK, WARNING

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(demo_app_url):
    return demo_app_url  # one app for the session (conftest): these tests only query it


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client(app_url)


def _text_search(client, text, k=5, label="any", view="any", finding="any"):
    # The session State output stays server-side: API clients get the four visible outputs.
    gallery, reports_html, status, records = client.predict(text, k, label, view, finding, api_name="/search_text")
    return gallery, reports_html, status, records


def test_text_query_returns_ranked_labelled_studies_with_that_finding(client):
    gallery, reports_html, status, records = _text_search(client, "large right pleural effusion", k=5)
    hits = records["hits"]
    assert len(hits) == 5 and len(gallery) == 5
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["label"] in ("normal", "abnormal") for h in hits)
    with_effusion = sum("pleural effusion" in h["finding_names"] for h in hits)
    print(f"'large right pleural effusion': {with_effusion}/5 of the top 5 tagged pleural effusion")
    assert with_effusion >= 3
    assert "<mark>" in reports_html and status.startswith(OK)


def test_text_filters_are_applied(client):
    _, _, _, records = _text_search(client, "cardiomegaly", k=6, label="normal")
    assert records["hits"] and all(h["label"] == "normal" for h in records["hits"])


def test_image_query_with_a_real_pediatric_film(client, pediatric_films):
    film = pediatric_films[0]
    preview, gallery, reports_html, probability, status, records = client.predict(
        handle_file(str(film)), 5, "any", "any", "any", api_name="/search_image")
    # A real film is unlike the phantom index (issue 14): results under a warning, no estimate.
    assert status.startswith(WARNING) and "unlike the studies in the index" in status, status
    assert records["familiarity"]["verdict"] == "unlike_index"
    assert len(records["hits"]) == 5 and len(records["reports"]) == 5
    assert records["abnormal_probability"] is None
    assert [h["rank"] for h in records["hits"]] == [1, 2, 3, 4, 5]


def test_image_query_with_a_phantom_finds_itself_first(client, demo_studies):
    study = next(s for s in demo_studies if "pleural effusion" in s.finding_names)
    _, _, _, _, status, records = client.predict(handle_file(study.image_path), 3, "any", "any", "any", api_name="/search_image")
    assert records["hits"][0]["study_id"] == study.study_id
    assert records["hits"][0]["score"] > 0.99


def test_bad_upload_gets_a_message_and_the_app_keeps_serving(client, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_bytes(b"this is not an image at all" * 20)
    _, gallery, _, _, status, records = client.predict(handle_file(str(fake)), 5, "any", "any", "any", api_name="/search_image")
    assert status.startswith(WARNING) and "not a readable image" in status
    assert gallery == [] and records["hits"] == []
    _, _, status, records = _text_search(client, "cardiomegaly")
    assert status.startswith(OK) and len(records["hits"]) == 5
