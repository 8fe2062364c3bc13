"""What a scoring run reads: every input found under SLIDES, each with a stable ``slide_id``.

SLIDES is a folder (searched recursively), a glob, a manifest CSV (a ``path`` column; ``label``
optional: then the summary has accuracy, balanced accuracy and AUC), or one slide. The rule is
that **every candidate slide gets a row**: a scoring run that silently skips a file hides a
problem from the person who has to answer for the cohort. A file found in a folder or by a glob
is a candidate when a reader claims its name (:func:`ram_wsi.slide._paths.reader_claims`: a
slide or image ending, a store, or no ending at all); what is a candidate but not a slide (a
text file named ``.svs``, a truncated TIFF) becomes an ``error`` row with the reader's reason.
Files no reader claims (``manifest.csv``, ``notes.txt``, ``README.md``) are not scored and
are listed as ``skipped`` in the summary and ``run_metadata.json``. A manifest's rows and a
path given alone are always candidates. Besides, these are folded or left out, each for a
reason:

* a slide that is a directory is one input: a ``.zarr`` name or a ``zarr.json`` inside (an
  OME-Zarr store; a ``x.zarr`` that is not a store is one input that fails), and the ``.dcm``
  files of one folder (one DICOM slide, as OpenSlide reads it: the row's ``path`` is its first
  file, ``files`` counts them);
* a slide's companions are part of its row, not rows of their own: ``<slide>.json`` sidecars
  (the synthetic writer's), an MRXS slide's data folder (``<stem>/`` beside ``<stem>.mrxs``);
* hidden files and folders (``.name``), and the run's own output folder when it lies inside.

``slide_id`` names the slide's outputs (``geojson/<slide_id>.geojson``): the path relative to
the root, folders joined by ``__``, without its extension -- unless another input has the same
stem, then with it (``a.svs`` and ``a.tiff`` stay apart).

SLIDES may be a URI (``s3://bucket/cohort/``, ``gs://``, ``az://``, ``http(s)://``): a prefix is
listed as a folder is scanned, one depth at a time (:func:`ram_wsi.slide.remote.scan_prefix`:
a "directory" with a ``zarr.json`` is one store), with the same slide ids relative to it -- so
the same slides score the same from their local copies and from the store. Manifests may list
URIs. A remote input's stamp (what resuming compares) is its store's ``zarr.json``'s size and
modification time, taken from the listing or fetched for all inputs together.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, SlideError
from ..slide._paths import file_format_ending, is_uri, is_zarr_path, reader_claims
from ..slide.remote import is_remote

__all__ = ["InputScan", "ScoreInput", "file_stamp", "find_inputs", "scan_inputs"]


@dataclass(frozen=True)
class ScoreInput:
    """One row of a scoring run: what to open (``path``), how its outputs are named, its
    known label (manifests only) and how many files it stands for."""

    path: str
    slide_id: str
    label: str | None = None
    files: int = 1
    stamp: tuple[int, float] | None = None
    """``(size, mtime)`` when the scan already knows it (a remote listing), else None:
    :func:`file_stamp` takes it when the run starts."""


@dataclass(frozen=True)
class InputScan:
    """What SLIDES names: the inputs to score, and the files found beside them that no reader
    claims (not scored, listed)."""

    inputs: list[ScoreInput]
    skipped: list[str]


def file_stamp(path: str) -> tuple[int, float]:
    """``(size in bytes, mtime)`` of an input -- what resuming compares. A directory (zarr
    store, DICOM folder) sums its files' sizes and takes their newest mtime; a remote store
    is its ``zarr.json``'s (a rewrite replaces it); another URI or a missing path is
    ``(0, 0.0)``."""
    if is_remote(path):
        from ..slide.remote import stamps

        return stamps([path])[0]
    if is_uri(path):
        return 0, 0.0
    p = Path(path)
    try:
        if p.is_dir():
            size, newest = 0, p.stat().st_mtime
            for root, _dirs, names in os.walk(p):
                for n in names:
                    st = os.stat(os.path.join(root, n))
                    size += st.st_size
                    newest = max(newest, st.st_mtime)
            return size, newest
        st = p.stat()
        return st.st_size, st.st_mtime
    except OSError:
        return 0, 0.0


def _scan(folder: Path, skip: Path | None) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, files)`` of every input under ``folder`` (module docstring's rules), sorted,
    and the files no reader claims."""
    found: list[tuple[str, int]] = []
    unclaimed: list[str] = []
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        dirs[:], stores = _walk_dirs(here, sorted(d for d in dirs if not d.startswith(".")), skip,
                                     found)
        files = sorted(n for n in names if not n.startswith("."))
        beside = set(files) | set(dirs) | stores  # what a `<name>.json` sidecar may belong to
        dcm = [n for n in files if n.lower().endswith(".dcm")]
        if dcm:
            found.append((str(here / dcm[0]), len(dcm)))
        for n in files:
            if n.lower().endswith(".dcm"):
                continue
            if n.endswith(".json") and n[:-5] in beside:
                continue  # a sidecar of a slide beside it
            if reader_claims(n):
                found.append((str(here / n), 1))
            else:
                unclaimed.append(str(here / n))
    return sorted(found), sorted(unclaimed)


def _walk_dirs(here: Path, dirs: list[str], skip: Path | None,
               found: list[tuple[str, int]]) -> tuple[list[str], set[str]]:
    """The sub-folders of ``here`` to walk into, and the stores among ``dirs`` (each one input,
    added to ``found``); the run's output folder and MRXS data folders are neither."""
    keep, stores = [], set()
    for d in dirs:
        p = here / d
        if skip is not None and p.resolve() == skip:
            continue
        if is_zarr_path(p):
            found.append((str(p), 1))
            stores.add(d)
            continue
        if (here / f"{d}.mrxs").is_file():  # an MRXS slide's data folder
            continue
        keep.append(d)
    return keep, stores


def _slide_ids(paths: list[str], root: Path | str | None) -> list[str]:
    """Stable, unique, file-name-safe ids (module docstring); ``root`` is a folder, or the
    URI of a scanned prefix."""
    def rel(p: str) -> str:
        if isinstance(root, str) and p.startswith(root.rstrip("/") + "/"):
            return "__".join(q for q in p[len(root.rstrip("/")) + 1:].split("/") if q)
        if isinstance(root, str) and p.rstrip("/") == root.rstrip("/"):
            return p.rstrip("/").rsplit("/", 1)[-1]  # the prefix is the store itself
        if is_uri(p):
            return re.sub(r"[^A-Za-z0-9._-]+", "_", p)
        q = Path(p)
        try:
            r = q.resolve().relative_to(root) if root is not None else Path(q.name)
        except ValueError:
            r = Path(q.name)
        return "__".join(r.parts)

    full = [rel(p) for p in paths]
    stems = [re.sub(r"\.[A-Za-z0-9]{1,5}$", "", f) or f for f in full]
    clash = Counter(stems)
    ids = [s if clash[s] == 1 else f for s, f in zip(stems, full)]
    ids = [re.sub(r"[^A-Za-z0-9._-]+", "_", i).strip(".") or "slide" for i in ids]
    seen: Counter[str] = Counter()
    out = []
    for i in ids:  # identical after sanitising (rare): numbered in path order
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}~{seen[i]}")
    return out


def _from_manifest(path: Path) -> list[ScoreInput]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the manifest: {exc}") from None
    if not rows:
        raise DataError(path, "manifest is empty; it needs a header with a 'path' column")
    head = [h.strip().lower() for h in rows[0]]
    if "path" not in head:
        raise DataError(path, f"manifest header {','.join(rows[0])!r} has no 'path' column")
    ip, il = head.index("path"), head.index("label") if "label" in head else None
    paths, labels = [], []
    for cells in rows[1:]:
        if not any(c.strip() for c in cells) or len(cells) <= ip or not cells[ip].strip():
            continue
        cell = cells[ip].strip()
        if not is_uri(cell):
            p = Path(cell).expanduser()
            cell = str(p if p.is_absolute() else (path.parent / p).resolve())
        paths.append(cell)
        labels.append(cells[il].strip() if il is not None and il < len(cells) else None)
    if not paths:  # the same error as an empty folder
        raise DataError(path, "holds no files to score (the manifest lists no slides)")
    root = path.parent.resolve()
    stamped = _remote_stamps(paths)
    return [ScoreInput(p, i, lab or None, stamp=stamped.get(p))
            for p, i, lab in zip(paths, _slide_ids(paths, root), labels)]


def _remote_stamps(paths: list[str]) -> dict[str, tuple[int, float]]:
    """The stamps of the remote inputs among ``paths``, fetched together per scheme (one round
    trip for all, rather than one each when the run starts)."""
    from ..slide.remote import scheme_of, stamps

    by_scheme: dict[str, list[str]] = {}
    for p in paths:
        if is_remote(p):
            by_scheme.setdefault(scheme_of(p), []).append(p)
    out: dict[str, tuple[int, float]] = {}
    for urls in by_scheme.values():
        out.update(zip(urls, stamps(urls)))
    return out


def find_inputs(spec: str | os.PathLike, *, exclude: str | os.PathLike | None = None
                ) -> list[ScoreInput]:
    """The inputs SLIDES names (:func:`scan_inputs`' inputs)."""
    return scan_inputs(spec, exclude=exclude).inputs


def scan_inputs(spec: str | os.PathLike, *, exclude: str | os.PathLike | None = None
                ) -> InputScan:
    """The inputs SLIDES names (module docstring), sorted by path (manifests: in their order),
    and the files found that no reader claims.

    Args:
        spec: a folder, a glob (``*``, ``?``, ``[``; ``**`` recursive), a ``.csv`` manifest,
            one slide path, or a ``procedural:`` URI.
        exclude: a folder never searched (the run's output folder).

    Raises:
        DataError: nothing exists at ``spec`` or it matches no candidate slide.
    """
    text = os.fspath(spec)
    skip = Path(exclude).resolve() if exclude is not None else None
    if is_remote(text):
        return _scan_remote(text)
    if is_uri(text):
        return InputScan([ScoreInput(text, _slide_ids([text], None)[0])], [])
    p = Path(text).expanduser()
    if p.is_file() and p.suffix.lower() == ".csv":
        return InputScan(_from_manifest(p), [])
    if p.is_dir() and not is_zarr_path(p):
        (found, unclaimed), root = _scan(p, skip), p.resolve()
    elif p.exists():
        found, unclaimed, root = [(str(p), 1)], [], None
    elif glob.has_magic(text):
        found, unclaimed, root = _glob(text, skip)
    else:
        raise DataError(text, "no such slide, folder or manifest")
    if not found:
        raise DataError(text, "holds no files to score" + (
            f" (no reader claims the {len(unclaimed)} found: {_names(unclaimed)})"
            if unclaimed else ""))
    paths = [f for f, _ in found]
    inputs = [ScoreInput(f, i, None, n) for (f, n), i in zip(found, _slide_ids(paths, root))]
    return InputScan(inputs, unclaimed)


def _scan_remote(url: str) -> InputScan:
    """What a URI names: one slide file (an OpenSlide or image ending: one input, whose row
    will say to convert it), or a prefix listed as a folder (one store, or the stores and
    files under it), with this process's storage options.

    Raises:
        DataError: the prefix cannot be listed (missing bucket, access denied, unreachable)
            or holds nothing to score.
    """
    from ..slide.remote import scan_prefix, stamps

    if file_format_ending(url):
        stamp = stamps([url])[0]
        return InputScan([ScoreInput(url, _slide_ids([url], url)[0], stamp=stamp)], [])
    try:
        found, unclaimed = scan_prefix(url)
    except SlideError as exc:
        raise DataError(url, f"cannot list it: {exc.cause}") from None
    if not found:
        raise DataError(url, "holds no slides to score (no OME-Zarr store or slide file)" + (
            f"; no reader claims the {len(unclaimed)} file(s) found: {_names(unclaimed)}"
            if unclaimed else ""))
    root = url.rstrip("/")
    paths = [u for u, _ in found]
    return InputScan([ScoreInput(u, i, None, 1, stamp) for (u, stamp), i in
                      zip(found, _slide_ids(paths, root))], unclaimed)


def _glob(text: str, skip: Path | None) -> tuple[list[tuple[str, int]], list[str], Path | None]:
    """What a glob matches, folders scanned, and the root the slide ids are relative to."""
    found: list[tuple[str, int]] = []
    unclaimed: list[str] = []
    for m in sorted(glob.glob(text, recursive=True)):
        q = Path(m)
        if q.is_dir() and not is_zarr_path(q):
            more, unread = _scan(q, skip)
            found.extend(more)
            unclaimed.extend(unread)
        elif q.name.startswith("."):
            continue
        elif reader_claims(q):
            found.append((m, 1))
        else:
            unclaimed.append(m)
    found = sorted(set(found))
    root = (Path(os.path.commonpath([str(Path(f).resolve().parent) for f, _ in found]))
            if found else None)
    return found, sorted(set(unclaimed)), root


def _names(paths: list[str], most: int = 3) -> str:
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in paths[:most]]
    return ", ".join(names) + (", ..." if len(paths) > most else "")
