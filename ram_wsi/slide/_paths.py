"""Path rules shared by the dispatcher (:func:`ram_wsi.slide.open_source`) and the backends:
which directories are zarr stores and which are DICOM slides. Written once so that
``open_source`` and ``OpenSlideSource`` (which also accepts a DICOM directory) agree."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SlideError

__all__ = ["is_uri", "is_zarr_path", "resolve_dicom_dir"]

_URI = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def is_uri(path: str | os.PathLike) -> bool:
    """A slide named by a URI (``procedural:needle?size=...``) rather than a file: never
    resolved against a folder, never stat-ed. A Windows drive (``C:\\``) is not one."""
    text = os.fspath(path)
    return bool(_URI.match(text)) and len(text.split(":", 1)[0]) > 1


def is_zarr_path(path: str | os.PathLike) -> bool:
    """A directory with a ``zarr.json``, or a name ending in ``.zarr``."""
    p = Path(path)
    return (p.is_dir() and (p / "zarr.json").exists()) or p.name.endswith(".zarr")


def resolve_dicom_dir(path: str) -> str:
    """A DICOM slide may be named by its directory: OpenSlide wants one of its files.

    Raises:
        SlideError: the directory is a zarr store, or holds no ``.dcm`` file.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "zarr.json").exists():
            raise SlideError(path, "is a zarr store; open it with ZarrSource")
        dcm = sorted(p.glob("*.dcm"))
        if dcm:
            return str(dcm[0])
        raise SlideError(path, "is a directory but neither a zarr store (no zarr.json) nor a "
                               "DICOM slide (no .dcm files)")
    return path
