"""`python -m bench.search`, as the README documents it, with and without --suite, at tiny size.

Both forms once crashed or could crash on a name bound inside one branch only; these run the real
command line in a subprocess and check the JSON it prints (figures, not timings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--big-n", "2000", "--small-n", "500", "--queries", "20"]


def _run(args: list[str], tmp_path: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the full-index case builds in a temp folder
    proc = subprocess.run([sys.executable, "-m", "bench.search", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_search_default_form_runs(tmp_path):
    report = _run(["--demo-n", "300", *TINY], tmp_path)
    demo = report["demo_gallery"]
    assert (demo["n"], demo["dim"], demo["n_queries"]) == (300, 256, 20)
    assert set(demo["by_M"]) == {"8", "16", "32"}
    big = report["large_gallery"]  # measured in a spawned child (bench.common.run_isolated)
    assert (big["n"], big["dim"], big["n_queries"]) == (2000, 512, 20)
    assert set(big["hnsw_vs_exact"]) == {"500", "2000"}
    assert all(0.9 <= row["recall_at_10"] <= 1.0 for row in big["hnsw_vs_exact"].values())
    assert big["peak_rss_mb_after_build"] >= big["peak_rss_mb_before_build"] > 0
    assert all(row["only_allowed"] for row in big["filtered_at_default_ef"])


def test_bench_search_suite_form_runs(tmp_path):
    report = _run(["--suite", *TINY], tmp_path)
    cases = report["search"]["cases"]
    assert set(cases) == {"500", "2000", "2000x256", "1000000"}
    assert cases["1000000"].startswith("skipped")
    assert cases["500"]["what_is_built"].startswith("one hnsw graph")
    for key in ("500", "2000", "2000x256"):  # every case serves with the ef its build chose, recorded beside it
        assert cases[key]["ef"] == cases[key]["ef_tuning"]["ef"]
    for key, dim in (("2000", 512), ("2000x256", 256)):  # the largest size builds the whole index
        case = cases[key]
        assert (case["n"], case["dim"]) == (2000, dim)
        assert case["what_is_built"].startswith("index.build.build_index")
        assert len(case["build_s_per_graph"]) == 2 and case["index_mb_on_disk"] > 0
    assert all(0.9 <= cases[k]["recall_at_10"] <= 1.0 for k in ("500", "2000", "2000x256"))
    assert report["machine"]["cpus"] >= 1


def test_a_kept_graph_is_reused_with_its_build_figures_and_refused_for_another_gallery(tmp_path):
    """``--keep-index`` / ``--reuse``: the 1M row's queries can be timed again without the build."""
    import pytest

    from bench.search import scale_case

    kept = scale_case(3000, dim=32, n_queries=30, exact_queries=10, keep=str(tmp_path / "g.bin"))
    assert kept["kept_index"] == str(tmp_path / "g.bin") and (tmp_path / "g.json").is_file()
    again = scale_case(3000, dim=32, n_queries=30, exact_queries=10, reuse=str(tmp_path / "g.bin"))
    for key in ("build_s", "ef", "ef_tuning", "peak_rss_mb", "M"):  # the build's figures, not re-measured
        assert again[key] == kept[key]
    assert again["recall_at_10"] == kept["recall_at_10"]  # same graph, same ef, same queries
    assert again["reused_index"]["path"] == str(tmp_path / "g.bin") and "reused_index" not in kept
    assert len(again["load_average_before_queries"]) == 3
    with pytest.raises(SystemExit, match="another gallery"):
        scale_case(2500, dim=32, n_queries=30, reuse=str(tmp_path / "g.bin"))
    with pytest.raises(SystemExit, match="no saved graph"):
        scale_case(3000, dim=32, n_queries=30, reuse=str(tmp_path / "missing.bin"))
