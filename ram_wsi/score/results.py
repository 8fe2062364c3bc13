"""A scoring run's table: its columns (documented once, here), the journal that makes it
survive a crash, and ``results.csv`` / ``results.parquet`` built from it.

Why a journal: results must reach the disk as slides finish, so that a crash or Ctrl-C loses
at most the slides in flight, yet a CSV cannot be appended to atomically and stay sorted. So
each finished slide is one line appended (and fsync-ed) to ``OUT/journal.jsonl`` -- after its
GeoJSON and thumbnail are in place, so a journal line is the slide's commit -- and
``results.csv`` is rebuilt from the journal (atomically: temp file, then rename) every few
seconds and at the end: one row per input, in input order, the newest line of each path. A
resumed run reads the journal back, so it neither loses nor repeats a slide; two runs on one
folder share it (appends of a line are atomic on a local file system) and each rebuilds the
table from all of it at its end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io_utils import atomic_open, atomic_path

__all__ = ["COLUMNS", "NOISY_COLUMNS", "ResultStore", "columns_for", "read_journal"]

#: ``(name, type, meaning)`` of every column, in order; ``prob_<class>`` stands for one column
#: per class name (the checkpoint's). The README's table is this list.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("path", "str", "the input as found (a DICOM slide: its first file)"),
    ("slide_id", "str", "names its outputs: geojson/<slide_id>.geojson, thumbnails/<slide_id>.png"),
    ("status", "str", "ok, or error"),
    ("error", "str", ("why it failed: the reader's typed error naming the file and the cause, "
                      "a timeout, or a crash of the reading process; empty when ok")),
    ("predicted", "str", "the class with the highest M-averaged probability"),
    ("prob_<class>", "float", "that class's probability, averaged over the M sampled rollouts"),
    ("predicted_mean_policy", "str", "the deterministic (mean-policy) rollout's class"),
    ("label", "str", "the manifest's label, when SLIDES is a manifest with a label column"),
    ("rollouts", "int", "M, the sampled rollouts averaged"),
    ("glimpses", "int", "glimpses of the mean-policy decision (T; fewer with --stop-at)"),
    ("glimpses_read", "int", ("glimpses read in all, the mean-policy path included: "
                              "T x (M + 1) without --stop-at")),
    ("pixels_read", "int", ("pixels decoded for this slide, at whatever level: the thumbnail "
                            "and every glimpse's blocks (tiles / chunks)")),
    ("bytes_read", "int", "compressed bytes read from storage (where the reader counts them)"),
    ("pixels_decision", "int", "pixels decoded by one decision alone: thumbnail + mean path"),
    ("tissue_fraction", "float", "fraction of the slide that the thumbnail's mask calls tissue"),
    ("on_tissue", "float", "fraction of the glimpses that landed on tissue"),
    ("width", "int", "level-0 width, pixels"),
    ("height", "int", "level-0 height, pixels"),
    ("levels", "int", "pyramid levels"),
    ("mpp", "float", "micrometres per level-0 pixel; empty when the slide states none"),
    ("backend", "str", "the reader: openslide, zarr, image (PNG/JPEG/stripped TIFF), ..."),
    ("seconds", "float", "wall seconds for this slide in its scorer, reading and model"),
    ("seconds_open", "float", "of which opening it, the thumbnail, tissue mask and context"),
    ("seconds_glimpses", "float", "of which reading glimpses (all rollouts)"),
    ("seconds_model", "float", "of which the network (all rollouts)"),
    ("seconds_write", "float", "drawing and writing its GeoJSON and thumbnail"),
    ("file_size", "int", "bytes of the input (a directory: of its files) when scored"),
    ("file_mtime", "float", ("its modification time (newest file of a directory): with "
                             "file_size, what a resumed run compares")),
    ("files", "int", "files the input stands for (a DICOM slide's .dcm files; else 1)"),
    ("attempts", "int", "tries it took (a retry follows a crash of the reading process)"),
    ("worker", "str", "host:pid of the scorer, and the Ray node (first 8 hex digits)"),
)

#: Columns that vary between two runs of the same slides (timings, who scored it).
NOISY_COLUMNS = ("seconds", "seconds_open", "seconds_glimpses", "seconds_model", "seconds_write",
                 "attempts", "worker")

_TYPES = {name: kind for name, kind, _ in COLUMNS}


def columns_for(class_names: Sequence[str]) -> list[str]:
    """The table's header for a checkpoint's classes."""
    out: list[str] = []
    for name, _, _ in COLUMNS:
        out.extend(f"prob_{c}" for c in class_names) if name == "prob_<class>" else out.append(name)
    return out


def read_journal(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{path: newest row}`` of a journal; a torn last line (a crash mid-append) is skipped."""
    rows: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "path" in row:
                    rows[str(row["path"])] = row
    except FileNotFoundError:
        pass
    return rows


class ResultStore:
    """The table of one output folder (module docstring).

    Args:
        out: the output folder.
        class_names: the checkpoint's classes (the ``prob_<class>`` columns).
        flush_seconds: how often :meth:`add` rebuilds ``results.csv`` (the journal is written
            on every :meth:`add` regardless).
    """

    def __init__(self, out: str | Path, class_names: Sequence[str], *, flush_seconds: float = 5.0):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.journal = self.out / "journal.jsonl"
        self.header = columns_for(class_names)
        self.flush_seconds = float(flush_seconds)
        self.rows = read_journal(self.journal)
        self._order: list[str] = []
        self._last_flush = time.monotonic()

    def previous(self, path: str) -> dict[str, Any] | None:
        """The newest row of ``path`` from earlier runs (or this one)."""
        return self.rows.get(path)

    def set_order(self, paths: Iterable[str]) -> None:
        """The inputs of this run, in their order: the rows ``results.csv`` holds."""
        self._order = list(paths)

    def add(self, row: dict[str, Any]) -> None:
        """Commit one finished slide: one fsync-ed journal line; the CSV every few seconds."""
        line = json.dumps({k: row.get(k) for k in self.header}, default=float) + "\n"
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[str(row["path"])] = row
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def table(self, reread: bool = False) -> list[dict[str, Any]]:
        """This run's rows in input order (``reread``: first merge lines other runs appended)."""
        if reread:
            self.rows.update(read_journal(self.journal))
        return [self.rows[p] for p in self._order if p in self.rows]

    def flush(self, reread: bool = False) -> Path:
        """Rebuild ``results.csv`` atomically."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header)
        for r in self.table(reread):
            w.writerow([_cell(r.get(k)) for k in self.header])
        path = self.out / "results.csv"
        with atomic_open(path, "w") as fh:
            fh.write(buf.getvalue())
        self._last_flush = time.monotonic()
        return path

    def write_parquet(self) -> Path | None:
        """``results.parquet`` with typed columns (None when pyarrow is missing)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            return None
        types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
        rows = self.table()
        cols = {}
        for k in self.header:
            kind = "float" if k.startswith("prob_") else _TYPES.get(k, "str")
            vals = [r.get(k) for r in rows]
            vals = [None if v in ("", None) else (str(v) if kind == "str" else
                                                  int(v) if kind == "int" else float(v))
                    for v in vals]
            cols[k] = pa.array(vals, type=types[kind])
        path = self.out / "results.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(cols), tmp)
        return path


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)  # floats: shortest exact form
