"""Run folders (`runs/<kind>/<name>`) and the plain-text tables printed at the end of a command."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def runs_root() -> Path:
    """Where run outputs go: $DERMEDGE_RUNS, else ./runs."""
    return Path(os.environ.get("DERMEDGE_RUNS", "runs"))


def new_run_dir(kind: str, name: str | None = None, exist_ok: bool = False) -> Path:
    """A fresh `runs/<kind>/<name>` folder; without a name, `exp`, `exp2`, `exp3`... like Ultralytics."""
    base = runs_root() / kind
    if name:
        path = base / name
        if path.exists() and any(path.iterdir()) and not exist_ok:
            raise FileExistsError(f"{path} already exists; pick another --name or pass --exist-ok")
    else:
        n = 1
        while (path := base / ("exp" if n == 1 else f"exp{n}")).exists():
            n += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub-markdown table, readable in a terminal as it is."""

    def cell(v: object) -> str:
        """A float with 4 decimals (1 decimal from 10 up); anything else as str."""
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        """One table line: each cell padded to its column's width."""
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in body)])
