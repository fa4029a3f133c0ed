"""The machinery of ``python -m bench.report``: a :class:`Table` spec, cell helpers, and rewriting the
block between a page's ``<!-- report:NAME -->`` markers. The specs are in ``bench/report_tables.py``."""
from __future__ import annotations

import json
import re
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


def rendered_pages(tables: Sequence[Table]) -> dict[str, tuple[str, str]]:
    """{page: (text on disk, text with every block regenerated)}."""
    pages: dict[str, tuple[str, str]] = {}
    for table in tables:
        current, new = pages.get(table.page, (None, None))
        if current is None:
            current = new = (ROOT / table.page).read_text()
        pages[table.page] = (current, fill(new, table))
    return pages
