"""Issue 26: what was made faster gives the same answers.

* 50 queries (text and image) through the handlers as the app wraps them: the same results,
  verdicts and evidence (report cards with their marks, the why-table) with every cache cold as
  with the caches warm, and report cards equal to the uncached highlighter's.
* Gallery images are staged once per source file, served from a static folder of the temp dir.
* The embedding map is drawn when its tab opens, from the last query's state (not per query).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from data import report_findings as report_text
from data.findings import findings_from_tags
from webapp import presenters, serving

PHRASES = ["large right pleural effusion", "small left pleural effusion", "cardiomegaly", "right upper lobe opacity",
           "left lower lobe atelectasis", "right pneumothorax", "calcified granuloma",
           "no acute cardiopulmonary abnormality", "no pneumothorax", "bilateral pleural effusions",
           "left basilar opacity", "hyperinflated lungs", "degenerative changes of the spine"]


@pytest.fixture(scope="module")
def demo_service(demo_built, tmp_path_factory):
    from index.engine import SearchEngine
    from model.retrieval_model import RetrievalModel
    from webapp.service import RunInfo, SearchService

    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-temp"))
    run_dir, index_dir = demo_built
    engine = SearchEngine.load(index_dir, RetrievalModel.from_run(run_dir))
    return SearchService(engine, RunInfo.load(run_dir), None)


def _queries(service, folder: Path, n: int = 50) -> list[tuple[str, object]]:
    rng = random.Random(26)
    metas = service.engine.store.get([int(i) for i in rng.sample(range(service.engine.count), n // 2)])
    images = [service.engine.resolve_path(m.image_path) for m in metas]
    out: list[tuple[str, object]] = []
    for i in range(n):
        if i % 2:
            out.append(("image", images[i // 2]))
        else:
            out.append(("text", (PHRASES[(i // 2) % len(PHRASES)], rng.choice([3, 5, 8]), rng.choice(["any", "abnormal"]))))
    return out


def _answer(service, kind: str, query, folder: Path, i: int) -> dict:
    """The user-visible answer of one query, as the app's wrapped handler returns it."""
    if kind == "text":
        text, k, label = query
        gallery, reports, status, records, state = serving.gallery_outputs(service.search_text)(text, k, label, "any", "any")
        preview = None
    else:
        upload = shutil.copy(query, folder / f"q{i}-{Path(query).name}")  # the app deletes uploads once read
        preview, gallery, reports, _, status, records, state = serving.gallery_outputs(service.search_image)(
            upload, 8, "any", "any", "any")
    return {"records": records, "reports": reports, "status": status, "state": state,
            "gallery": [(Path(p).read_bytes(), caption) for p, caption in gallery],
            "preview": None if preview is None else preview.tobytes()}


def test_fifty_queries_same_answers_cold_and_warm(demo_service, tmp_path):
    queries = _queries(demo_service, tmp_path)
    cold = []
    for i, (kind, query) in enumerate(queries):
        presenters.highlight_words.cache_clear()
        report_text.report_findings.cache_clear()
        report_text.segments.cache_clear()
        report_text.parse_query.cache_clear()
        serving.staged_copies.clear()
        findings_from_tags.cache_clear()
        demo_service.engine.clear_caches()  # the studies kept for hits, the store's memoised reads
        cold.append(_answer(demo_service, kind, query, tmp_path, i))
    order = list(range(len(queries)))
    random.Random(1).shuffle(order)
    for i in order:  # warm, in another order: what one query cached must not change another's answer
        warm = _answer(demo_service, *queries[i], tmp_path, 1000 + i)
        assert warm == cold[i], f"query {i} ({queries[i][0]}) answered differently with warm caches"
    assert presenters.highlight_words.cache_info().hits > 0 and report_text.segments.cache_info().hits > 0
    assert demo_service.engine.cached_studies > 0 and demo_service.engine.store.memo_size > 0
    kinds = {kind for kind, _ in queries}
    assert kinds == {"text", "image"} and all(a["records"]["hits"] for a in cold)
    assert any("<mark" in a["reports"] for a in cold) and all("Why these matches" in a["reports"] for a in cold)
    assert all(a["records"].get("familiarity") is not None for a in cold if demo_service.engine.familiarity)


def test_kept_studies_and_memoised_reads_are_bounded_and_equal_fresh_ones(demo_service, monkeypatch):
    """Hits built through the engine's bounded study cache equal fresh reads of the store; the store's
    memoised reads equal unmemoised ones, and neither cache grows past its bound."""
    from index import engine as engine_module, store as store_module

    engine, store = demo_service.engine, demo_service.engine.store
    engine.clear_caches()
    monkeypatch.setattr(engine_module, "STUDY_CACHE", 5)
    monkeypatch.setattr(store_module, "READ_MEMO", 3)
    rng = random.Random(7)
    for _ in range(40):
        rows = [rng.randrange(engine.count) for _ in range(rng.choice([1, 4, 9]))]
        hits = engine.hits_at(rows, [0.5] * len(rows))
        fresh = store.get(rows)
        assert [h.row_id for h in hits] == rows and [h.rank for h in hits] == list(range(1, len(rows) + 1))
        assert [h.study_id for h in hits] == [m.study.study_id for m in fresh]
        assert [h.image_path for h in hits] == [engine.resolve_path(m.image_path) for m in fresh]
        assert engine.cached_studies <= 5
        name = rng.choice(["pleural effusion", "cardiomegaly", "opacity", "pneumothorax", "nodule"])
        sql = "SELECT row_id, side FROM report_findings WHERE finding = ? ORDER BY row_id"
        assert store.read(sql, (name,), memo=True) == store.read(sql, (name,)) and store.memo_size <= 3
    with pytest.raises(KeyError):
        engine.hits_at([engine.count + 5], [0.1])


def test_cached_highlight_equals_the_uncached_one(demo_service):
    uncached = presenters.highlight_words.__wrapped__
    metas = demo_service.engine.store.get(list(range(0, demo_service.engine.count, 80)))
    for meta in metas:
        terms = presenters.hit_terms(meta.study.finding_names, meta.study.tags) + ["effusion", "no"]
        for text in (meta.study.findings, meta.study.impression):
            words = tuple(sorted({t for t in terms if t and t.strip()}, key=lambda t: (-len(t), t)))
            assert presenters.highlight(text, terms) == uncached(text or "", words)
            assert presenters.highlight(text, list(reversed(terms))) == uncached(text or "", words)


def test_cached_report_findings_equal_the_uncached_parse(demo_service):
    """The memoised report findings (and query parse) are what a fresh parse of the text gives."""
    metas = demo_service.engine.store.get(list(range(0, demo_service.engine.count, 40)))
    texts = [m.study.report_text for m in metas]
    for text in texts + texts:  # the second pass is served from the cache
        assert report_text.report_findings(text) == report_text.report_findings.__wrapped__(text)
        assert report_text.segments(text) == report_text.segments.__wrapped__(text)
    assert report_text.report_findings.cache_info().hits >= len(texts)
    assert any(report_text.report_findings(t) for t in texts)
    for phrase in PHRASES:
        assert report_text.parse_query(phrase) == report_text.parse_query.__wrapped__(phrase)


def test_gallery_images_are_staged_once_into_a_static_folder(demo_service, tmp_path):
    from gradio.data_classes import _StaticFiles

    source = tmp_path / "film.png"
    source.write_bytes(b"\x89PNG fake bytes")
    first = serving.stage_file(str(source))
    assert Path(first).parent.parent == serving.gallery_dir() and Path(first).read_bytes() == source.read_bytes()
    assert serving.gallery_dir().resolve() in _StaticFiles.all_paths
    assert serving.stage_file(str(source)) == first  # found again, not copied again
    os.unlink(first)  # the temp folder's cleaner removed it: staged again
    assert serving.stage_file(str(source)) == first and Path(first).is_file()
    source.write_bytes(b"\x89PNG other bytes")  # a changed file is a new copy (content-addressed)
    changed = serving.stage_file(str(source))
    assert changed != first and Path(changed).read_bytes() == b"\x89PNG other bytes"
    assert serving.stage_file(str(tmp_path / "missing.png")) == str(tmp_path / "missing.png")


def test_map_is_drawn_when_its_tab_opens_from_the_last_query(demo_service):
    import app

    demo = app.build_ui(demo_service, [], [])
    config = demo.get_config_file()
    by_id = {c["id"]: c for c in config["components"]}
    state_id = next(i for i, c in by_id.items() if c["type"] == "state" and c["props"].get("value") is None)
    map_tab = next(i for i, c in by_id.items() if c["type"] == "tabitem" and c["props"].get("id") == "map")
    plots = {i for i, c in by_id.items() if c["type"] == "plot"}
    map_events = [d for d in config["dependencies"] if set(d["outputs"]) == plots]
    triggers = {(t[0], t[1]) for d in map_events for t in d["targets"]}
    assert (map_tab, "select") in triggers
    assert all(state_id in d["inputs"] for d in map_events)  # the star is the last query's
    assert not any(t == (state_id, "change") for d in config["dependencies"] for t in map(tuple, d["targets"]))


def test_staged_copies_are_bounded_least_recently_shown_first(demo_service, tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "STAGED_MAX", 2)
    serving.staged_copies.clear()
    sources = []
    for i in range(3):
        sources.append(tmp_path / f"film{i}.png")
        sources[-1].write_bytes(f"film {i}".encode())
    first, second = serving.stage_file(str(sources[0])), serving.stage_file(str(sources[1]))
    assert serving.stage_file(str(sources[0])) == first  # shown again: now the most recent
    third = serving.stage_file(str(sources[2]))
    assert len(serving.staged_copies) == 2 and not Path(second).exists()  # the one shown longest ago went
    assert Path(first).is_file() and Path(third).is_file()


def test_a_large_film_is_searched_whole_and_previewed_small(demo_service, tmp_path):
    from PIL import Image

    from data.images import load_radiograph

    source = demo_service.engine.resolve_path(demo_service.engine.store.get([0])[0].image_path)
    film = tmp_path / "film.jpg"
    Image.open(source).convert("L").resize((2048, 2048)).save(film, quality=90)
    whole = demo_service.engine.search_by_image(load_radiograph(film).image, k=5)
    preview, _, _, _, status, records, _ = demo_service.search_image(str(shutil.copy(film, tmp_path / "up.jpg")), 5,
                                                                      "any", "any", "any")
    assert max(preview.size) == presenters.PREVIEW_SIDE and preview.mode == "L"
    assert [h["study_id"] for h in records["hits"]] == whole.study_ids


def test_the_page_gets_verdict_and_chips_in_the_search_event_and_scripts_the_same_answer(demo_service):
    """No chained .then per search: the page's event answers the results, the verdict badge and the
    parse chips at once; the named endpoint answers the results as before (same payload)."""
    import asyncio

    import app
    from gradio.state_holder import SessionState

    from webapp.text_query import chips_html
    from webapp.trust import verdict_of

    demo = app.build_ui(demo_service, [], [])
    ids = {c.elem_id: c._id for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    api = next(fn for fn in demo.fns.values() if fn.api_name == "search_text")
    page = [fn for fn in demo.fns.values() if ids["parse-chips"] in [o._id for o in fn.outputs]]
    assert len(page) == 2 and all(ids["verdict-text"] in [o._id for o in fn.outputs] for fn in page)  # click, Enter
    image_page = [fn for fn in demo.fns.values() if ids["verdict-image"] in [o._id for o in fn.outputs]]
    assert {len(fn.outputs) for fn in image_page} == {8}  # button and upload: results + verdict in one event

    async def answer(fn, inputs):
        return (await demo.process_api(fn, inputs, state=SessionState(demo), session_hash="t"))["data"]

    for phrase in ("small left pleural effusion", "no pneumothorax", "zebra crossing"):
        inputs = [phrase, 5, "any", "any", "any", "any", "hybrid"]
        scripted, shown = asyncio.run(answer(api, inputs)), asyncio.run(answer(page[0], inputs))
        assert len(scripted) == 5 and shown[:5] == scripted
        records = scripted[3].model_dump() if hasattr(scripted[3], "model_dump") else scripted[3]  # gradio's JsonData
        assert records["hits"] or phrase == "zebra crossing"
        assert shown[5] == verdict_of(records) and shown[6] == chips_html(phrase, "hybrid")
    assert "cxr-chip" in shown[6] or shown[6] == chips_html("zebra crossing", "hybrid")
