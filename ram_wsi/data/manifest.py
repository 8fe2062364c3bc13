"""Slide manifests: a CSV with a header ``path,label[,split][,case]``, paths relative to the
manifest's folder.

The one place manifests are parsed (:func:`load_manifest`, and its old-style wrapper
:func:`read_manifest`: slide episodes, the model's shape, benchmarks) and written
(:func:`write_manifest`: ``pipelines/make_slides.py``, the scaling benchmark).

:func:`load_manifest` checks every row (empty path or label, unknown split, duplicate slide,
a slide that cannot be opened, a case split across train/val/test), collects *all* bad rows
and either raises one :class:`~ram_wsi.errors.DataError` listing them or drops them
(``drop_bad=True``). Rows without a split get a seeded split, stratified by label, at the case
(patient) level, so no case ever straddles train and test.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError, RamWsiError
from ..io_utils import atomic_open
from ..slide._paths import is_uri

__all__ = ["BadRow", "SlideManifest", "SlideRecord", "load_manifest", "read_manifest",
           "write_manifest"]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val",
                  "test": "test"}
_COLUMNS = ("path", "label", "split", "case")
_DROP_HINT = "set data.slides.drop_bad_rows: true to drop them"


@dataclass(frozen=True)
class SlideRecord:
    """One good manifest row.

    Attributes:
        path: absolute path (relative ones resolved against the manifest's folder), or a URI
            (``procedural:...``) exactly as written.
        label: index into :attr:`SlideManifest.class_names`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        case: case / patient id; a row without one is its own case (its path).
        row: line number in the CSV (header = 1, first data row = 2).
    """

    path: str
    label: int
    split: str
    case: str
    row: int


@dataclass(frozen=True)
class BadRow:
    """A row that failed a check: its line number, (resolved) path and why."""

    row: int
    path: str
    reason: str


@dataclass
class SlideManifest:
    """A parsed manifest: the good rows (file order), the classes, and the rows dropped."""

    source: Path
    class_names: list[str]
    records: list[SlideRecord]
    dropped: list[BadRow] = field(default_factory=list)
    seed: int = 0
    split_method: str = "column"   # "column", "seeded", or "mixed": where the splits came from

    def split(self, name: str) -> list[SlideRecord]:
        """The records of one split (``train``/``val``/``test``; ``validation`` is ``val``)."""
        key = _SPLIT_ALIASES.get(str(name).strip().lower())
        if key is None:
            raise ValueError(f"split must be one of train, val, test; got {name!r}")
        return [r for r in self.records if r.split == key]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Slides per class name (every class, zeros included), in class order."""
        recs = self.records if split is None else self.split(split)
        counts = Counter(r.label for r in recs)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def sampling_weights(self, split: str = "train", balanced: bool = False) -> np.ndarray:
        """One float64 weight per record of ``split`` (in order), summing to 1.

        Uniform, or with ``balanced`` each class present in the split gets equal total mass.

        Raises:
            DataError: the split has no slides.
        """
        recs = self.split(split)
        if not recs:
            raise DataError(self.source, f"no slides in split {split!r}")
        if not balanced:
            return np.full(len(recs), 1.0 / len(recs), dtype=np.float64)
        counts = Counter(r.label for r in recs)
        w = np.array([1.0 / (len(counts) * counts[r.label]) for r in recs], dtype=np.float64)
        return w / w.sum()

    def describe(self) -> str:
        """One line for a run log."""
        n = {s: sum(r.split == s for r in self.records) for s in SPLITS}
        classes = " / ".join(f"{k} {v}" for k, v in self.class_counts().items())
        seeded = f"seeded stratified (seed {self.seed}) by case"
        how = {"column": "column", "seeded": seeded}.get(self.split_method,
                                                          f"column + {seeded}")
        text = (f"manifest {self.source.name}: {len(self.records)} slides "
                f"(train {n['train']}, val {n['val']}, test {n['test']}), classes {classes}, "
                f"split: {how}")
        if self.dropped:
            k = len(self.dropped)
            text += f", {k} row{'s' if k != 1 else ''} dropped"
        return text


def _resolve(cell: str, folder: Path) -> str:
    if is_uri(cell):
        return cell
    p = Path(cell).expanduser()
    return str((p if p.is_absolute() else folder / p).resolve())


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, {column: stripped value})`` for each non-blank data row."""
    if not path.is_file():
        raise DataError(path, "slide manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(path, "manifest is empty; it needs a header with columns "
                                      "path,label")
            names = [h.strip().lower() for h in header]
            for col in _COLUMNS:
                if names.count(col) > 1:
                    raise DataError(path, f"manifest header has column {col!r} twice")
            missing = [c for c in ("path", "label") if c not in names]
            if missing:
                raise DataError(path, f"manifest header {','.join(h.strip() for h in header)!r}"
                                      f" lacks column(s) {', '.join(missing)}; it needs "
                                      "path,label (optional split, case)")
            idx = {c: names.index(c) for c in _COLUMNS if c in names}
            rows = []
            prev = reader.line_num
            for cells in reader:
                start, prev = prev + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                rows.append((start, {c: (cells[i].strip() if i < len(cells) else "")
                                     for c, i in idx.items()}))
    except UnicodeDecodeError as e:
        raise DataError(path, f"manifest is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise DataError(path, f"manifest is not valid CSV: {e}") from None
    return rows


def _open_error(open_slide: Callable[[str], Any], path: str) -> str | None:
    """None if the slide opens (and its ``.info`` reads), else the reason."""
    try:
        src = open_slide(path)
        try:
            src.info  # noqa: B018 -- touching it is the check
        finally:
            close = getattr(src, "close", None)
            if callable(close):
                close()
    except (RamWsiError, OSError) as e:
        cause = getattr(e, "cause", None)
        return f"cannot open slide: {cause if isinstance(cause, str) else e}"
    return None


def _split_cases(cases: dict[str, list[int]], n_classes: int, seed: int, val_fraction: float,
                 test_fraction: float) -> dict[str, str]:
    """Seeded stratified split of ``{case: [labels]}`` -> ``{case: split}``."""
    strata: dict[int, list[str]] = {}
    for case, labels in cases.items():
        counts = np.bincount(labels, minlength=n_classes)
        strata.setdefault(int(np.argmax(counts)), []).append(case)   # argmax: ties -> smallest
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for stratum in sorted(strata):
        members = strata[stratum]
        order = rng.permutation(len(members))
        n = len(members)
        n_val, n_test = round(n * val_fraction), round(n * test_fraction)
        if n >= 3:
            n_val = max(n_val, 1) if val_fraction > 0 else n_val
            n_test = max(n_test, 1) if test_fraction > 0 else n_test
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        for k, i in enumerate(order):
            out[members[i]] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return out


def load_manifest(path: str | Path, *, seed: int = 0, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, check_slides: bool = True,
                  drop_bad: bool = False, class_names: Sequence[str] | None = None,
                  open_slide: Callable[[str], Any] | None = None) -> SlideManifest:
    """Parse and check a slide manifest.

    Args:
        path: CSV with a header; columns ``path``, ``label`` required (names case-insensitive),
            ``split`` (train/val/test, ``validation``/``valid`` = val, empty = unassigned) and
            ``case`` (patient id; empty = the row is its own case) optional; others ignored.
        seed, val_fraction, test_fraction: the seeded, label-stratified, case-level split of the
            cases that have no explicit split (per stratum ``round(n * fraction)`` cases, at
            least 1 when the stratum has >= 3 cases and the fraction is > 0).
        check_slides: open every slide (``open_slide(path).info``) and treat failures as bad rows.
        drop_bad: drop bad rows (returned in ``.dropped``) instead of raising.
        class_names: the classes a checkpoint was trained on; labels must be among them.
        open_slide: how a slide is opened (default :func:`ram_wsi.slide.open_source`). It is
            also called for URIs; the parser itself never stats a URI.

    Class names come from the labels of every row with a label (bad ones included), so that
    dropping an unreadable slide never renumbers the classes: all-integer labels are class
    indices (``["0", ..., str(max)]``), otherwise the sorted distinct labels.

    Raises:
        DataError: the file is missing or empty, the header lacks ``path``/``label``, any row is
            bad (one error listing them all) unless ``drop_bad``, or no good row is left.
        ValueError: impossible fractions.
    """
    path = Path(path)
    _check_fractions(val_fraction, test_fraction)
    rows = _read_rows(path)
    names, integer = _class_names(rows, class_names)
    checks = _RowChecks()
    parsed = _parse_rows(rows, path.parent.resolve(), names, integer,
                         strict=class_names is not None, checks=checks)
    if check_slides:
        _check_openable(parsed, open_slide, checks)
    _check_case_splits(parsed, checks)
    bad_rows = checks.bad_rows()
    if bad_rows and not drop_bad:
        raise DataError(path, _bad_listing(bad_rows, len(rows)))
    good = [r for r in parsed if r.line not in checks.reasons]
    if not good:
        raise DataError(path, "manifest has no usable rows" if not rows else
                        f"all {len(rows)} rows are bad; nothing left to load")
    records, method = _assign_splits(good, len(names), seed, val_fraction, test_fraction)
    return SlideManifest(source=path, class_names=names, records=records, dropped=bad_rows,
                         seed=seed, split_method=method)


class _Row(NamedTuple):
    """A parsed data row: line, resolved path, label index (-1: none), split, case."""

    line: int
    path: str
    label: int
    split: str | None
    case: str | None

    @property
    def key(self) -> str:
        """The case the row belongs to: its case id, or itself."""
        return self.case or self.path


class _RowChecks:
    """Every reason each row is bad (a row may fail several checks), and the path shown."""

    def __init__(self) -> None:
        self.reasons: dict[int, list[str]] = {}
        self.shown: dict[int, str] = {}

    def bad(self, line: int, why: str) -> None:
        self.reasons.setdefault(line, []).append(why)

    def bad_rows(self) -> list[BadRow]:
        return [BadRow(line, self.shown[line], "; ".join(whys))
                for line, whys in sorted(self.reasons.items())]


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must "
                         "each be in [0, 1) with a sum below 1")


def _class_names(rows: list[tuple[int, dict[str, str]]],
                 class_names: Sequence[str] | None) -> tuple[list[str], bool]:
    """The classes (a checkpoint's, or from every row's label) and whether the labels are all
    integers (then class indices)."""
    raw_labels = [r["label"] for _, r in rows if r["label"]]
    integer = bool(raw_labels) and all(v.lstrip("-").isdigit() for v in raw_labels)
    if class_names is not None:
        return [str(c) for c in class_names], integer
    if integer:
        return [str(i) for i in range(max(0, max(int(v) for v in raw_labels)) + 1)], integer
    return sorted(set(raw_labels)), integer


def _parse_rows(rows: list[tuple[int, dict[str, str]]], folder: Path, names: list[str],
                integer: bool, *, strict: bool, checks: _RowChecks) -> list[_Row]:
    """Each row's path (resolved; empty and duplicate ones bad), label (``strict``: one of
    ``names``, a checkpoint's) and split."""
    index = {n: i for i, n in enumerate(names)}
    first_seen: dict[str, int] = {}
    parsed = []
    for line, r in rows:
        resolved = _resolve(r["path"], folder) if r["path"] else ""
        checks.shown[line] = resolved
        if not resolved:
            checks.bad(line, "path is empty")
        elif resolved in first_seen:
            checks.bad(line, f"duplicate of row {first_seen[resolved]}")
        else:
            first_seen[resolved] = line
        label, why = _label(r["label"], names, index, integer, strict)
        if why:
            checks.bad(line, why)
        split, cell = None, r.get("split", "")
        if cell:
            split = _SPLIT_ALIASES.get(cell.lower())
            if split is None:
                checks.bad(line, f"split {cell!r} is not one of train, val, test")
        parsed.append(_Row(line, resolved, label, split, r.get("case") or None))
    return parsed


def _label(cell: str, names: list[str], index: dict[str, int], integer: bool,
           strict: bool) -> tuple[int, str | None]:
    """``(label index, None)``, or ``(-1, why it is bad)``."""
    if not cell:
        return -1, "label is empty"
    if strict:
        if cell in index:
            return index[cell], None
        return -1, f"label {cell!r} is not one of the checkpoint's classes {', '.join(names)}"
    if integer:
        if int(cell) < 0:
            return -1, f"label {cell!r} is not a class index (0 or more)"
        return int(cell), None
    return index[cell], None


def _check_openable(parsed: list[_Row], open_slide: Callable[[str], Any] | None,
                    checks: _RowChecks) -> None:
    """Open every slide once (its first row); a slide that does not open makes its row bad."""
    if open_slide is None:
        from ..slide import open_source as open_slide
    seen: set[str] = set()
    for r in parsed:
        if r.path and r.path not in seen:
            seen.add(r.path)
            why = _open_error(open_slide, r.path)
            if why:
                checks.bad(r.line, why)


def _check_case_splits(parsed: list[_Row], checks: _RowChecks) -> None:
    """A case's explicit splits must agree (over every row that names a valid split)."""
    explicit: dict[str, dict[str, int]] = {}
    for r in parsed:
        if r.split is not None:
            explicit.setdefault(r.key, {}).setdefault(r.split, r.line)
    for case, seen in explicit.items():
        if len(seen) > 1:
            parts = [f"{s} (row {ln})" for s, ln in sorted(seen.items(), key=lambda kv: kv[1])]
            why = f"case {case} is split across {', '.join(parts[:-1])} and {parts[-1]}"
            for r in parsed:
                if r.key == case:
                    checks.bad(r.line, why)


def _bad_listing(bad_rows: list[BadRow], n_rows: int) -> str:
    k = len(bad_rows)
    listing = "\n".join(f"  row {b.row} ({b.path or '-'}): {b.reason}" for b in bad_rows)
    return (f"{k} of {n_rows} row{'s' if n_rows != 1 else ''} {'is' if k == 1 else 'are'} "
            f"bad:\n{listing}\n{_DROP_HINT}")


def _assign_splits(good: list[_Row], n_classes: int, seed: int, val_fraction: float,
                   test_fraction: float) -> tuple[list[SlideRecord], str]:
    """The records with their splits: explicit ones spread over each case, then a seeded
    split of the other cases; and where the splits came from (column, seeded or mixed)."""
    case_split: dict[str, str] = {}
    for r in good:
        if r.split is not None:
            case_split[r.key] = r.split
    n_column = sum(r.key in case_split for r in good)
    todo: dict[str, list[int]] = {}
    for r in good:
        if r.key not in case_split:
            todo.setdefault(r.key, []).append(r.label)
    case_split.update(_split_cases(todo, n_classes, seed, val_fraction, test_fraction))
    records = [SlideRecord(r.path, r.label, case_split[r.key], r.key, r.line) for r in good]
    method = "column" if n_column == len(good) else "seeded" if n_column == 0 else "mixed"
    return records, method


def read_manifest(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """``(paths, label indices, class names)`` of every row, in file order (slides are not
    opened). See :func:`load_manifest` for the rules; any bad row raises ``DataError``."""
    m = load_manifest(path, check_slides=False)
    return [r.path for r in m.records], [r.label for r in m.records], list(m.class_names)


def write_manifest(path: str | Path, rows: Iterable[Sequence[Any]]) -> Path:
    """Write ``(path, label)``, ``(path, label, split)`` or ``(path, label, split, case)``
    rows (paths relative to the manifest) atomically, under a header with as many of
    ``path,label,split,case`` as the longest row; returns the manifest's path."""
    path = Path(path)
    rows = [tuple(r) for r in rows]
    width = max((len(r) for r in rows), default=2)
    if not 2 <= width <= len(_COLUMNS) or any(len(r) < 2 for r in rows):
        raise ValueError("manifest rows must be (path, label[, split[, case]]) tuples")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS[:width])
    w.writerows(r + ("",) * (width - len(r)) for r in rows)
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())
    return path
