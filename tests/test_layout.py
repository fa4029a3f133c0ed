"""The codebase stays easy to carry on: imports run one way, no cycles, small modules, no
repeated blocks. Read from the source files (ast) and pylint's duplicate-code checker, so a
change that breaks a rule fails here with the offending module named.

Layers, lowest first: data -> runtime -> evaluation -> model -> trust -> index -> scale -> pipeline -> webapp
(one room a job; README's layout table names them). A module may import its own
layer and those below. Entry points (app.py, train.py, bench/, every ``__main__.py``) sit on top:
they may import any layer, and nothing imports them.

Contracts: no module (tests and benches included) reads, writes or imports a ``_private`` name that
another module of the project defines; it uses that module's public properties and functions.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"data": 0, "runtime": 1, "evaluation": 2, "model": 3, "trust": 4, "index": 5, "scale": 6, "pipeline": 7,
          "webapp": 8}
ENTRY_SCRIPTS = {"app", "train"}
MAX_LINES = 500
PROJECT = (*LAYERS, "bench", "tests", "app", "train")


def source_files() -> list[Path]:
    """Every non-test Python file of the project."""
    files = [ROOT / "app.py", ROOT / "train.py"]
    for package in (*LAYERS, "bench"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_entry_point(module: str) -> bool:
    return module in ENTRY_SCRIPTS or module.split(".")[0] == "bench" or module.endswith("__main__")


def project_imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports, at module level or inside functions (lazy imports count:
    they are dependencies all the same)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:  # `from index.build import x` -> index.build
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in source_files()}
    known = set(modules)
    return {m: project_imports(p, known) - {m} for m, p in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        for target in targets:
            if is_entry_point(target) and not (module.startswith("bench.") and target.startswith("bench.")):
                bad.append(f"{module} imports the entry point {target}")
            elif not is_entry_point(module) and LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]:
                bad.append(f"{module} ({module.split('.')[0]}) imports {target}, a layer above it")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way(graph):
    assert graph["webapp.loading"] >= {"pipeline.demo"} and "pipeline.steps" in graph["train"]  # the parser sees imports
    assert layer_violations(graph) == []


def test_the_checks_catch_a_reverse_import_and_a_cycle():
    bad = {"data.records": {"model.head"}, "model.head": {"data.records"}, "index.build": {"train"}}
    assert layer_violations(bad) == ["data.records (data) imports model.head, a layer above it",
                                     "index.build imports the entry point train"]
    assert cycles(bad) == [["data.records", "model.head"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_train_py_the_index_cli_and_the_first_start_share_one_pipeline(graph):
    """The three ways to build go through ``pipeline.steps``; webapp keeps no build job of its own."""
    assert "pipeline.steps" in graph["train"] and "pipeline.steps" in graph["index.__main__"]
    assert "pipeline.steps" in graph["pipeline.demo"] and "pipeline.demo" in graph["webapp.loading"] and "webapp.loading" in graph["app"]
    for module, targets in graph.items():
        if module.startswith("webapp."):
            assert not targets & {"model.training", "index.build", "model.features"}, module


def callers_of(names: set[str]) -> dict[str, set[str]]:
    """Function name -> the modules (non-test) that call it, by name or as an attribute."""
    found: dict[str, set[str]] = {n: set() for n in names}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in found:
                    found[name].add(module_name(path))
    return found


def test_every_way_to_build_an_index_goes_through_the_one_builder():
    """train.py --index, python -m index build (any engine, any --out) and the app's first start call the
    pipeline's index step, which calls the one builder; index add appends through the same module.
    Only benches write synthetic vectors with ``build_index`` directly."""
    calls = callers_of({"index_run", "build_from_encoder", "build_from_features", "build_index", "add_from_encoder",
                        "add_studies", "write_vectors", "append_vectors"})
    assert {m for m in calls["index_run"] if not m.startswith("bench.")} == {"pipeline.steps", "pipeline.demo",
                                                                            "index.__main__"}
    # the PACS source (index.sync) builds and syncs through the same two entry points of the builder
    assert {m for m in calls["build_from_encoder"] if not m.startswith("bench.")} == {"pipeline.steps", "index.sync"}
    assert {m for m in calls["add_from_encoder"] if not m.startswith("bench.")} <= {"index.__main__", "index.sync"}
    assert {m for m in calls["build_index"] if not m.startswith("bench.")} == {"index.build"}
    assert calls["build_from_features"] == calls["add_studies"] == calls["write_vectors"] == {"index.build"}
    assert calls["append_vectors"] == {"index.build"}


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in source_files()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes["train.py"] > 0


def repeated_blocks(paths: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """pylint's similarity checker: blocks of 10+ lines found twice (imports, docstrings and comments aside)."""
    return subprocess.run([sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code",
                           "--min-similarity-lines=10", "--ignore-imports=yes", "--ignore-comments=yes",
                           "--ignore-docstrings=yes", "--score=no", *paths],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_no_block_of_ten_lines_repeated():
    proc = repeated_blocks(["app.py", "train.py", *LAYERS, "bench"], ROOT)
    assert "R0801" not in proc.stdout, proc.stdout[-4000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_duplicate_checker_finds_a_copied_block(tmp_path):
    body = "\n".join(f"    x{i} = a * {i} + b\n    total += x{i}" for i in range(6))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name in ("one", "two"):
        (tmp_path / "pkg" / f"{name}.py").write_text(f"def {name}(a, b):\n    total = 0\n{body}\n    return total\n")
    assert "R0801" in repeated_blocks(["pkg"], tmp_path).stdout


# ------------------------------------------------------------------------- private names stay home
def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, variables, imports as, and ``self._x``/``cls._x``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _on_self(node):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return {n for n in names if _private(n)}


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def private_accesses(files: dict[str, str]) -> list[str]:
    """``module: what`` for each use of another project module's private name: ``from x import _y``
    of a project module, or ``obj._y`` (read or write, not on self/cls) where ``_y`` is defined in
    another module of the project and not in this one. Third-party privates are not the project's."""
    trees = {name: ast.parse(text, name) for name, text in files.items()}
    own = {name: _own_private_names(tree) for name, tree in trees.items()}
    everywhere = set().union(*own.values()) if own else set()
    bad = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in PROJECT:
                bad += [f"{name}: imports {node.module}.{a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and not _on_self(node) \
                    and node.attr not in own[name] and node.attr in everywhere:
                bad.append(f"{name}:{node.lineno}: uses .{node.attr} of another module")
    return sorted(bad)


def test_no_module_uses_another_modules_private_names():
    files = [*source_files(), *sorted((ROOT / "tests").glob("*.py"))]
    assert private_accesses({str(p.relative_to(ROOT)): p.read_text() for p in files}) == []


def test_the_private_name_check_catches_reads_writes_and_imports():
    files = {
        "lib.py": "class Box:\n    def __init__(self):\n        self._items = []\n\ndef _helper():\n    return 1\n",
        "user.py": "from lib import Box, _helper\nbox = Box()\nbox._items.append(1)\nbox._items = []\n",
        "fine.py": "import os\nclass Own:\n    def __init__(self):\n        self._x = 1\n    def same(self, other):\n"
                   "        return other._x\nos._exit\n",
    }
    global PROJECT
    saved, PROJECT = PROJECT, ("lib",)
    try:
        assert private_accesses(files) == ["user.py: imports lib._helper", "user.py:3: uses ._items of another module",
                                           "user.py:4: uses ._items of another module"]
    finally:
        PROJECT = saved


def readme_layout_folders(text: str) -> list[str]:
    """The folders named in the first column of the README's "## Layout" table."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([\w]+)/` \|", section, re.M)


def test_readme_layout_table_names_every_folder_in_import_order():
    """The README's layout table is the map a newcomer reads: it names each room once, in the layer
    order the import check enforces (bench and tests last), and no folder that is not there."""
    folders = readme_layout_folders((ROOT / "README.md").read_text())
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert sorted(folders) == sorted({*packages, "tests"})
    assert folders[:len(LAYERS)] == sorted(LAYERS, key=LAYERS.get)
    assert folders[len(LAYERS):] == ["bench", "tests"]
