"""Where pip gets packages on this machine, as uv flags (standard library only: ``make setup`` runs it
before anything else is installed).

    python -m bench.pip_sources      # prints the flags: uv pip install $(python -m bench.pip_sources) -r ...

uv does not read pip's configuration; without these flags it would resolve against PyPI alone and miss
this machine's local wheels, extra indexes and constraints that pip uses (``pip config list``).
"""
from __future__ import annotations

import subprocess
import sys

# pip's settings that say where packages come from, and uv's flag for each (pip's other settings change
# nothing about which files get installed).
_PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint"}


def uv_source_args() -> list[str]:
    """This machine's pip configuration (``pip config list``: files and ``PIP_*``) as uv flags, so uv reads
    the same indexes, local wheels and constraints that pip would; uv merges indexes as pip does."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False).stdout
    values: dict[str, str] = {}
    for line in listed.splitlines():  # e.g. global.find-links='/opt/wheels'; :env: lines come last and win
        key, _, value = line.partition("=")
        if key.rpartition(".")[2] in _PIP_TO_UV:
            values[key.rpartition(".")[2]] = value.strip().strip("'\"")
    args = ["--index-strategy", "unsafe-best-match"]
    for key, value in values.items():
        args += [part for item in value.split() for part in (_PIP_TO_UV[key], item)]
    return args


if __name__ == "__main__":
    print(" ".join(uv_source_args()))
