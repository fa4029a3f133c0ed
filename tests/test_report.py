"""Generated tables (bench/report.py): the committed docs and README agree with the committed result JSON,
timing runs taken under load say so, and the README stays a front page whose links resolve."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import report
from bench.report_core import Table, fill, render_block, rendered_pages, rows_table
from bench.report_tables import TABLES

ROOT = Path(__file__).resolve().parent.parent


def test_committed_tables_equal_what_the_generator_writes():
    stale = [page for page, (current, new) in rendered_pages(TABLES).items() if current != new]
    assert not stale, f"run `python -m bench.report` and commit: {stale}"
    assert report.main(["--check"]) == 0


def test_every_table_has_its_markers_and_a_source_line():
    names = [t.name for t in TABLES]
    assert len(names) == len(set(names))
    for table in TABLES:
        text = (ROOT / table.page).read_text()
        assert text.count(f"<!-- report:{table.name} -->") == 1 and text.count(f"<!-- /report:{table.name} -->") == 1
        if all((ROOT / s).is_file() for s in table.sources):
            assert "*Source: " in render_block(table)


def _table(tmp_path: Path, load: list[float], timing: bool = True) -> Table:
    doc = {"machine": {"cpus": 2, "cpu_model": "Test CPU", "load_average": load, "load_average_at_end": [0.5, 0.5, 0.5]},
           "rows": [["a", 1.5]]}
    source = tmp_path / "result.json"
    source.write_text(json.dumps(doc))
    return Table("t", (str(source),), lambda docs: rows_table(["what", "value"], docs[0]["rows"]), "python -m bench.x",
                 page=str(tmp_path / "page.md"), timing=timing)


def test_a_timing_run_under_load_is_marked_once_and_a_quiet_one_is_not(tmp_path):
    busy = render_block(_table(tmp_path, [4.8, 3.0, 1.0]))
    assert busy.count("Taken under load") == 1 and "load average up to 4.8" in busy and "| a | 1.5 |" in busy
    quiet = render_block(_table(tmp_path, [1.2, 1.9, 3.0]))  # the 15-minute average is before the run
    assert "Taken under load" not in quiet and "load average up to 1.9" in quiet and "2 vCPU Test CPU" in quiet
    accuracy = render_block(_table(tmp_path, [9.0, 9.0, 9.0], timing=False))  # accuracy does not depend on load
    assert "Taken under load" not in accuracy


def test_fill_rewrites_only_between_the_markers(tmp_path):
    table = _table(tmp_path, [1.0, 1.0, 1.0])
    page = "intro\n<!-- report:t -->\nold table\n<!-- /report:t -->\noutro\n"
    new = fill(page, table)
    assert new.startswith("intro\n<!-- report:t -->\n| what | value |") and new.endswith("\n<!-- /report:t -->\noutro\n")
    assert "old table" not in new and fill(new, table) == new
    with pytest.raises(KeyError, match="markers"):
        fill("no markers here", table)


def test_a_result_not_committed_yet_says_how_to_make_it(tmp_path):
    table = Table("t", (str(tmp_path / "missing.json"),), lambda docs: "never", "python -m bench.new")
    assert render_block(table).startswith("*Not measured yet: run `python -m bench.new`")


def test_readme_is_a_front_page_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## Two commands", "## What runs offline", "## Your own data", "## Headline figures"):
        assert heading in text
    links = re.findall(r"\]\(((?:docs|assets)/[^)#]+)\)", text)
    missing = [link for link in links if not (ROOT / link).exists() and link != "docs/pacs.md"]  # PACS page: #27
    assert not missing and {"docs/evaluation.md", "docs/performance.md", "docs/scaling.md", "docs/trust.md",
                            "docs/serving.md"} <= set(links)
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(\.\./([^)#]+)\)", page.read_text()):
            assert (ROOT / link).exists(), f"{page.name}: {link}"
