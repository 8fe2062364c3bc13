"""What every benchmark prints: one JSON object per line (flushed), then a short table; and the
JSON-lines file some of them also write."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["emit", "print_table", "write_jsonl"]


def emit(rec: dict[str, Any], sink: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Print ``rec`` as one JSON line on stdout (and append it to ``sink``)."""
    if sink is not None:
        sink.append(rec)
    print(json.dumps(rec), flush=True)
    return rec


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]], mode: str = "w") -> None:
    """``rows`` as JSON lines in ``path`` (``mode="a"`` appends)."""
    with open(path, mode) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def print_table(rows: list[dict[str, Any]], cols: list[str], file: IO[str] | None = None) -> None:
    """A plain fixed-width table (after the JSON lines)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=file or sys.stdout)
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)),
              file=file or sys.stdout)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) < 1:
            return f"{v:.3f}"
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
