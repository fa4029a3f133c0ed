"""Write the figures' tables into docs/*.md and the README's headline block from committed result JSON.

    python -m bench.report           # rewrite every generated block
    python -m bench.report --check   # exit 1 naming each block that differs (tests/test_report.py runs this)

Why: a figure typed by hand goes stale and loses the load it was taken at. Each table here is a
:class:`Table` spec: the result files it reads (committed under ``bench/results/``), the command that
makes them, and a ``render`` function from their JSON to Markdown. The block lives in a page between
two markers, ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; everything outside them is prose.

Every block ends with its source line: file, command, machine and load average. A timing table
(``timing=True``) whose run had a load average above ``QUIET_LOAD`` (2) says so once, in that line,
as "taken under load": those times are upper bounds, not quiet-host figures. Accuracy tables
(``timing=False``) do not depend on the load.

Adding a table (e.g. a new bench's JSON):
  1. commit its JSON under ``bench/results/`` (with ``machine`` from ``bench.common.machine()`` and,
     at the end of the run, ``machine.load_average_at_end``: every bench script already emits both);
  2. write ``def _my_table(docs: list[dict]) -> str`` (Markdown rows from the loaded JSON; ``cell`` and
     ``rows_table`` below help) and append ``Table("my-table", ("bench/results/my.json",), _my_table,
     "python -m bench.my --args > bench/results/my.json", page="docs/performance.md")`` to ``TABLES``;
  3. put ``<!-- report:my-table -->`` and ``<!-- /report:my-table -->`` on their own lines in that page;
  4. run ``python -m bench.report`` and commit the page. A source file not committed yet renders as
     "not measured yet: run …" instead of failing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
QUIET_LOAD = 2.0  # the host has 2 cores: above this, other jobs held a core while timing


@dataclass(frozen=True)
class Table:
    """One generated block: its marker name, the JSON it reads, how to remake that JSON, where it goes."""

    name: str
    sources: tuple[str, ...]
    render: Callable[[list[dict[str, Any]]], str]
    command: str
    page: str = "docs/performance.md"
    timing: bool = True


def cell(value: Any, digits: int = 3, unit: str = "") -> str:
    """A number for a table cell ("—" when missing)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
        return text + unit
    return str(value)


def rows_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dig(doc: Any, path: str, default: Any = None) -> Any:
    """``doc["a"]["b"]...`` for the dotted ``path`` (keys may hold dots if quoted by a list path)."""
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return default
        doc = doc[key]
    return doc


def run_load(doc: dict[str, Any]) -> float | None:
    """The highest 1- and 5-minute load average recorded at the start and end of a run."""
    values = []
    for key in ("load_average", "load_average_at_end"):
        la = dig(doc, f"machine.{key}")
        if isinstance(la, list):
            values += [float(x) for x in la[:2]]
    return max(values) if values else None


def source_line(table: Table, docs: list[dict[str, Any]]) -> str:
    """File, command, machine and load; "taken under load" once when a timing run was not quiet."""
    machines = {f"{dig(d, 'machine.cpus')} vCPU {dig(d, 'machine.cpu_model')}" for d in docs if dig(d, "machine")}
    loads = [x for x in (run_load(d) for d in docs) if x is not None]
    files = ", ".join(f"`{s}`" for s in table.sources)
    where = f"; {', '.join(sorted(machines))}" if machines else ""
    load = f", load average up to {max(loads):.1f}" if loads else ""
    line = f"*Source: {files} (`{table.command}`){where}{load}.*"
    if table.timing and loads and max(loads) > QUIET_LOAD:
        line += (f" **Taken under load** (load average > {QUIET_LOAD:g} on this host: other jobs shared the cores), "
                 "so the times are upper bounds, not quiet-host figures.")
    elif table.timing and not loads:
        line += " **Load not recorded**: treat the times as unverified."
    return line


def render_block(table: Table) -> str:
    paths = [ROOT / s for s in table.sources]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        return f"*Not measured yet: run `{table.command}` (writes {', '.join(table.sources)}).*"
    docs = [json.loads(p.read_text()) for p in paths]
    return table.render(docs).rstrip() + "\n\n" + source_line(table, docs)


def _block_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- report:{re.escape(name)} -->\n)(.*?)(\n<!-- /report:{re.escape(name)} -->)", re.S)


def fill(text: str, table: Table) -> str:
    """``text`` with the block of ``table`` rewritten; a page without the markers is an error."""
    pattern = _block_re(table.name)
    if not pattern.search(text):
        raise KeyError(f"{table.page} has no <!-- report:{table.name} --> ... <!-- /report:{table.name} --> markers")
    block = render_block(table)
    return pattern.sub(lambda m: m.group(1) + block + m.group(3), text, count=1)


def rendered_pages(tables: Sequence[Table] | None = None) -> dict[str, tuple[str, str]]:
    """{page: (text on disk, text with every block regenerated)}."""
    from bench import report_tables

    pages: dict[str, tuple[str, str]] = {}
    for table in tables if tables is not None else report_tables.TABLES:
        current, new = pages.get(table.page, (None, None))
        if current is None:
            current = new = (ROOT / table.page).read_text()
        pages[table.page] = (current, fill(new, table))
    return pages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed block differs")
    args = p.parse_args(argv)
    stale = []
    for page, (current, new) in rendered_pages().items():
        if current == new:
            continue
        stale.append(page)
        if not args.check:
            (ROOT / page).write_text(new)
    if args.check and stale:
        print(f"generated tables differ from the committed JSON in: {', '.join(stale)} "
              "(run `python -m bench.report` and commit)", file=sys.stderr)
        return 1
    print(("updated: " + ", ".join(stale)) if stale and not args.check else "tables up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
