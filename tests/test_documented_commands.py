"""Every command the README and docs/ document runs, at tiny size, as a user would type it.

``test_every_documented_command_is_covered`` reads the documented commands and fails when one has
neither a smoke run here nor a named test that runs it (so a new documented command cannot go
untested). The smoke runs use a 24-study phantom manifest and small sizes: they check exit codes,
files written and printed figures, not timings. Each command family starts once as a subprocess
(proving its entry point); further commands of the same family run in-process (``in_process``:
the module or script run as ``__main__`` with its argv, as the shell would, without another cold
start). The bench parts are one test each, so `make test`'s two workers share them out.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import PARTS, QUICK_ARGS

ROOT = Path(__file__).resolve().parent.parent
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])

# Documented commands run by other tests (a subprocess or the same entry point at small size).
COVERED_ELSEWHERE = {
    "make run": "tests/test_newcomer_errors.py runs `make setup` (its first half); tests/test_app_e2e.py runs app.py",
    "make test": ".ci/run (this suite)",
    "python app.py": "tests/test_app_e2e.py, tests/test_serving_security.py, tests/test_bundle.py (tests/app_server.py)",
    "python -m index embed": "tests/test_ray_ingest.py::test_killed_run_resumes_with_only_missing_shards (the "
                             "resume, in-process; the killed `python -m index build --engine ray` is its subprocess)",
    "python -m data.pediatric": "make setup (every fresh machine) and the pediatric_films fixture",
    "python -m pip": "make setup installs the same files",
    "python -m bench.report": "tests/test_report.py (python -m bench.report --check, in-process)",
    "python -m bench.space": "tests/test_space.py (bench.space.run: a fresh venv, SPACE_ID=test python app.py)",
    "python -m bench.runtime_compare": "tests/test_runtime.py::test_runtime_compare_profile_command (--profile)",
    "python -m bench.suite_time": "tests/test_suite_time.py::test_the_command_adds_a_labelled_run_and_keeps_the_others "
                                  "(--from-log, in-process; a full run is the suite itself)",
    "python -m bench.pip_sources": "tests/test_suite_time.py::test_pip_sources_turn_pips_configuration_into_uv_flags "
                                   "(a subprocess) and make setup",
    "python -m bench.search": "tests/test_bench_search.py::test_bench_search_suite_form_runs (a subprocess: the "
                              "--suite form `python -m bench` runs, at tiny size)",
}
# Parts of `python -m bench`, each also a documented `python -m bench.<part>`: run here one test each, in-process
# at `bench --quick`'s sizes (`search` is in COVERED_ELSEWHERE: tests/test_bench_search.py runs it).
BENCH_PARTS = {f"python -m bench.{part}" for part in PARTS if part != "search"}


def documented_commands(text: str = README) -> set[str]:
    """Normalised command keys: ``python -m MODULE [SUBCOMMAND]``, ``python SCRIPT.py``, ``make TARGET``."""
    keys = set()
    for m in re.finditer(r"(?:\.venv/bin/)?python3? +(-m +([\w.]+)(?: +(build|add|info|embed|pack|verify)\b)?|([\w/]+\.py))", text):
        if m.group(2):
            keys.add(" ".join(filter(None, ["python -m", m.group(2), m.group(3)])))
        else:
            keys.add(f"python {m.group(4)}")
    for m in re.finditer(r"^\s*make +(\w+)|`make (\w+)`", text, re.M):
        keys.add(f"make {m.group(1) or m.group(2)}")
    return keys


def run(*args: str, env_extra: dict | None = None, timeout: int = 900, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env_extra or {})}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def in_process(module: str, *args: str, expect: int = 0, env: dict | None = None, err: io.StringIO | None = None) -> str:
    """``python -m MODULE ARGS`` (or ``python SCRIPT.py ARGS`` when MODULE ends in .py) in this process,
    run as ``__main__`` with ``env`` added to the environment; returns its stdout (stderr into ``err``).
    The environment is restored afterwards: some commands set variables for their own run (a cache folder)."""
    out, argv, saved = io.StringIO(), sys.argv, dict(os.environ)
    sys.argv = [module, *args]
    os.environ.update(env or {})
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err or sys.stderr):
            if module.endswith(".py"):
                runpy.run_path(str(ROOT / module), run_name="__main__")
            else:
                runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(saved)
    assert code == expect, f"python {module} {' '.join(args)} exited {code}\n{out.getvalue()[-2000:]}"
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 phantoms as a CSV manifest (image_path,report,label,tags), plus 6 more for `index add`."""
    folder = tmp_path_factory.mktemp("documented")
    demo = folder / "demo"
    run("-m", "data.demo", "--limit", "30", "--out", str(demo), "--no-progress", "--workers", "1")
    from data.dataset import load_dataset

    studies = load_dataset(demo)
    assert len(studies) == 30

    def write(path: Path, rows) -> Path:
        with path.open("w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(["study_id", "image_path", "report", "label", "tags"])
            for s in rows:
                w.writerow([s.study_id, s.image_path, s.report_text or "No report.", s.label, ";".join(s.tags)])
        return path

    return {"dir": folder, "manifest": write(folder / "studies.csv", studies[:24]),
            "more": write(folder / "more.csv", studies[24:]), "demo": demo}


def test_every_documented_command_is_covered():
    smoke_tested = {"python -m data.demo", "python -m data.sample_sheet", "python -m data.phantom.golden",
                    "python train.py", "python -m index build", "python -m index add", "python -m index info",
                    "python -m index.bundle pack", "python -m index.bundle verify", "python -m bench",
                    "make bench", "python -m bench.scale", "python -m bench.composed", "python -m bench.heatmap",
                    "python -m index", "python -m bench.ablation", "python -m bench.train_cli", "python -m pipeline",
                    "python -m bench.side_probe", *BENCH_PARTS}
    documented = documented_commands()
    assert {"python train.py", "python -m index build", "make test"} <= documented  # the parser reads the README
    missing = sorted(documented - smoke_tested - set(COVERED_ELSEWHERE))
    assert not missing, f"README/docs document commands no test runs: {missing}"


def test_data_commands(tiny, tmp_path):
    sheet = tmp_path / "sheet.png"
    in_process("data.sample_sheet", "--out", str(sheet))  # the data family's entry point: `tiny` runs data.demo
    from PIL import Image

    assert Image.open(sheet).size[0] > 256
    assert "all golden renders match" in in_process("data.phantom.golden")
    assert (tiny["demo"] / "studies.jsonl").is_file()


def test_train_index_bundle_commands(tiny, tmp_path):
    run_dir, index_dir = tmp_path / "run", tmp_path / "index"
    common = ["--manifest", str(tiny["manifest"]), "--epochs", "2", "--bootstrap", "0", "--no-maps", "--quiet"]
    cache = {"CXR_CACHE": str(tmp_path / "cache")}  # a fresh cache: what train.py embeds, the index build reuses
    # in-process: the train.py entry point starts cold in bench.train_cli (test_training_bench_commands_at_tiny_size)
    in_process("train.py", *common, "--out", str(run_dir), env=cache)
    assert "--supcon-temperature" in in_process("train.py", "--help")
    report = json.loads((run_dir / "eval.json").read_text())
    features = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(features) == 1
    assert report["n_test"] >= 1 and report["models"]
    # every step in one command: the index comes from the same cached features (still one cache entry),
    # and the side-swapped reports' features are cached beside them
    in_process("train.py", *common, "--loss", "clip", "--w-side", "1", "--out", str(tmp_path / "run-clip"),
               "--index", str(tmp_path / "index-clip"), env=cache)
    config = json.loads((tmp_path / "run-clip" / "config.json").read_text())
    assert config["args"]["loss"] == "clip" and config["loss_weights"]["w_side"] == 1.0
    assert "loss" not in config and "optim" not in config  # each option once, under args
    assert sorted((tmp_path / "cache" / "features").iterdir()) == features
    assert (features[0] / "side_swapped_text.npz").is_file()
    clip_index = json.loads(in_process("index", "info", "--index", str(tmp_path / "index-clip")))
    assert clip_index["count"] == 24 and "frozen_images.npy" in clip_index["files"]
    # Weights that are not here: one clear line, exit 2, no traceback.
    bad = io.StringIO()  # (an uncaught exception would be raised into this test)
    in_process("train.py", "--backbone", "biomedclip", "--backbone-path", str(tmp_path / "no-such-dir"),
               *common, "--out", str(tmp_path / "run-bmc"), expect=2, err=bad)
    assert bad.getvalue().strip().splitlines()[-1].startswith("error: backbone folder") and "Traceback" not in bad.getvalue()

    # in-process: the `python -m index` entry point starts cold in tests/test_ray_ingest.py (`index build --engine ray`)
    in_process("index", "build", "--run", str(run_dir), "--out", str(index_dir), "--manifest", str(tiny["manifest"]),
               env=cache)
    assert sorted((tmp_path / "cache" / "features").iterdir()) == features  # one feature cache, no second embedding
    in_process("index", "add", "--index", str(index_dir), "--manifest", str(tiny["more"]))
    info = json.loads(in_process("index", "info", "--index", str(index_dir)))
    assert info["count"] == 30 and "frozen_images.npy" in info["files"]  # the added rows keep their frozen vectors
    assert np.load(index_dir / "frozen_images.npy", allow_pickle=False).shape[0] == 30

    bundle = tmp_path / "bundle"
    in_process("index.bundle", "pack", "--run", str(run_dir), "--index", str(index_dir), "--out", str(bundle))
    in_process("index.bundle", "verify", str(bundle))
    victim = bundle / sorted(dict(json.loads((bundle / "bundle.json").read_text())["files"]))[0]
    victim.write_bytes(victim.read_bytes() + b" ")
    in_process("index.bundle", "verify", str(bundle), expect=2)  # a damaged bundle is refused


def test_pipeline_command_is_a_no_op_once_built(demo_built):
    """`python -m pipeline` (what `make test` runs first) finds the built demo and leaves it as it is.
    In-process: `make test` (.ci/run) starts the same command cold just before pytest."""
    run_dir, index_dir = demo_built
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "head.safetensors", index_dir / "manifest.json")}
    out = in_process("pipeline")
    assert f"run {run_dir}, index {index_dir}" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_bench_entry_point_runs_a_part_as_a_subprocess():
    """`python -m bench --quick` (what `make bench` runs, at smoke sizes) with one part: the bench family's
    entry point, a part as its own `python -m bench.<part>` subprocess, the report with its target summary. The part
    is `serving`, which must run as a real `python -m` start anyway (its worker processes are spawned with functions
    of its __main__), so this one start proves both."""
    report = json.loads(run("-m", "bench", "--quick", "--only", "serving", timeout=900).stdout)
    assert "error" not in report["serving"], report["serving"]
    assert report["serving"]["part_seconds"] > 0 and len(report["serving"]["load_average_during"]) == 2
    assert report["summary"] and all({"value", "target", "met"} <= set(t) for t in report["summary"].values())
    assert json.loads((ROOT / "bench" / "out" / "quick.json").read_text())["started"] == report["started"]


@pytest.mark.parametrize("part", [p for p in PARTS if p not in ("serving", "search")])
def test_bench_part_at_quick_size(part, demo_built):
    """Every other part of `python -m bench --quick`, with its --quick arguments, in-process (`search` runs in
    tests/test_bench_search.py; `serving` above, through the entry point)."""
    args = [f"bench.{part}", *QUICK_ARGS.get(part, [])]
    report = json.loads(in_process(*args))
    result = report.get(part, report)  # a part's figures, read as `python -m bench` reads them
    assert isinstance(result, dict) and result and "error" not in result and report["machine"]["cpus"] >= 1
    if part == "train_head":
        assert report["train_head"]["train_head"]["epochs_run"] <= 2  # --quick caps the timed training
    if part == "startup":  # --quick times one warm start (the full bench the best of two)
        assert len(result["warm"]["runs"]) == 1 and result["warm"]["first_page_s"] > 0, result["warm"]


def test_bench_composed_heatmap_and_scale_at_tiny_size(demo_built):
    """`python -m bench.composed`, `bench.heatmap` and `bench.scale --quick`, in-process."""
    composed = json.loads(in_process("bench.composed", "--n", "50"))["composed"]
    assert all(g["n_queries"] > 0 for g in composed["groups"].values())
    heat = json.loads(in_process("bench.heatmap", "--n", "2"))["heatmap"]
    assert heat["method"] == "features" and heat["n_queries"] == 2  # the offline tower: feature-map occlusion
    assert heat["first_hit_ms"]["n"] == 2 and heat["extra_hit_ms"]["n"] == 2 and heat["first_hit_s"]["target"] == "< 1.5s"
    scale = json.loads(in_process("bench.scale", "--quick", "--only", "search"))
    assert "hnswlib" in json.dumps(scale)


def test_side_probe_command_reads_the_side_from_the_cached_features(demo_built):
    """`python -m bench.side_probe --no-poolings`, in-process: validation AUROC of left vs right from the demo's
    cached frozen features (issue #23 chose the offline tower's pooling by it)."""
    probe = json.loads(in_process("bench.side_probe", "--no-poolings"))
    image, report = probe["frozen image features (cached)"], probe["frozen report features (cached)"]
    assert probe["n_train"] > 500 and probe["n_val"] > 50 and image["dim"] == 1792
    assert image["val AUROC (unit, C=1)"] >= 0.8  # blocks[4] on a 4x4 grid keeps the side (the former 2x2 grid: 0.73)
    assert 0.5 < report["val AUROC (unit, C=1)"] <= 1.0


def test_training_bench_commands_at_tiny_size(demo_built, tmp_path):
    """The ablation grid (two variants: the paper's and one against it) and the train.py wall-time bench,
    one epoch each, on the cached demo features. Both in-process (the bench family's entry point starts cold in
    test_bench_entry_point_runs_a_part_as_a_subprocess; bench.train_cli times train.py as its own subprocess)."""
    in_process("bench.ablation", "--seeds", "0", "--variants", "paper", "side", "--epochs", "1",
               "--workers", "1", "--out", str(tmp_path / "ablation"))
    assert (tmp_path / "ablation" / "ablation.md").is_file() and "Δ" in (tmp_path / "ablation" / "ablation.md").read_text()
    grid = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert set(grid["variants"]) == {"paper: clip+supcon+bce", "clip+supcon[findings]+bce+side"}
    assert len(grid["runs"]) == 2 and grid["winner_on_validation"] in grid["variants"]
    assert {"load_average"} <= set(grid["machine"])  # bench.report quotes the load a result was taken at
    timed = json.loads(in_process("bench.train_cli", "--reuse-features",
                                  "--train-args", "--epochs 1 --no-maps --bootstrap 0"))
    assert timed["train_py_wall_s"] > 0 and timed["best_epoch"] == 1
