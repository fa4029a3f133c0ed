"""Write the figures' tables into docs/*.md and the README's headline block from committed result JSON.

    python -m bench.report           # rewrite every generated block
    python -m bench.report --check   # exit 1 naming each block that differs (tests/test_report.py runs this)

Why: a figure typed by hand goes stale and loses the load it was taken at. Each table is a
:class:`bench.report_core.Table` spec in ``bench/report_tables.py``: the result files it reads
(committed under ``bench/results/``), the command that makes them, and a ``render`` function from
their JSON to Markdown. The block lives in a page between two markers, ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->``; everything outside them is prose.

Every block ends with its source line: file, command, machine and load average. A timing table
(``timing=True``) whose run had a load average above ``QUIET_LOAD`` (2) says so once, in that line,
as "taken under load": those times are upper bounds, not quiet-host figures. Accuracy tables
(``timing=False``) do not depend on the load.

Adding a table (e.g. a new bench's JSON):
  1. commit its JSON under ``bench/results/`` (with ``machine`` from ``bench.common.machine()`` and,
     at the end of the run, ``machine.load_average_at_end``: every bench script already emits both);
  2. in ``bench/report_tables.py``, write ``def my_table(docs: list[dict]) -> str`` (Markdown from the
     loaded JSON documents; ``cell``, ``dig`` and ``rows_table`` help) and append
     ``Table("my-table", ("bench/results/my.json",), my_table, "python -m bench.my > bench/results/my.json",
     page="docs/performance.md")`` to ``TABLES`` (``timing=False`` for accuracy figures);
  3. put ``<!-- report:my-table -->`` and ``<!-- /report:my-table -->`` on their own lines in that page;
  4. run ``python -m bench.report`` and commit the page. A source file not committed yet renders as
     "not measured yet: run …" instead of failing.
"""
from __future__ import annotations

import argparse
import sys

from bench.report_core import ROOT, rendered_pages
from bench.report_tables import TABLES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed block differs")
    args = p.parse_args(argv)
    stale = []
    for page, (current, new) in rendered_pages(TABLES).items():
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
