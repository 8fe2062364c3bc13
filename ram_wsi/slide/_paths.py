"""Path rules shared by the dispatcher (:func:`ram_wsi.slide.open_source`) and the backends:
which directories are zarr stores and which are DICOM slides, and which file names a reader
claims. Written once so that ``open_source`` and ``OpenSlideSource`` (which also accepts a
DICOM directory) agree, and so that a scoring run knows what in a folder is meant as a slide."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ..errors import SlideError

__all__ = ["OPENSLIDE_EXTENSIONS", "file_format_ending", "is_uri", "is_zarr_path",
           "reader_claims", "resolve_dicom_dir"]

_URI = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
#: The file endings of the formats OpenSlide reads (Aperio, DICOM, Hamamatsu, Leica, MIRAX,
#: Philips, Sakura, Trestle, Ventana, Zeiss, generic tiled TIFF).
OPENSLIDE_EXTENSIONS = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn",
                                  ".mrxs", ".svslide", ".bif", ".dcm", ".czi"})


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


@functools.cache
def _image_extensions() -> frozenset[str]:
    """The endings of the image formats Pillow opens (the plain-image reader's)."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def file_format_ending(name: str) -> str | None:
    """The ending of ``name`` when it is a slide or image *file* format (OpenSlide's or
    Pillow's: ``.svs``, ``.tiff``, ``.png`` ...), else None (a store, or no ending). Remote
    storage serves stores only: such a name there is a file to convert."""
    ext = os.path.splitext(name.rstrip("/").rsplit("/", 1)[-1])[1].lower()
    return ext if ext and (ext in OPENSLIDE_EXTENSIONS or ext in _image_extensions()) else None


def reader_claims(path: str | os.PathLike) -> bool:
    """Whether a reader of this package claims ``path`` by its name: an OpenSlide format, an
    image Pillow opens, an OME-Zarr store (``.zarr``, or a directory with ``zarr.json``), a
    URI -- or a name without an ending (DICOM files often have none: the reader decides by
    content). A ``notes.csv`` or ``README.md`` is claimed by none."""
    if is_uri(path) or is_zarr_path(path):
        return True
    ext = Path(path).suffix.lower()
    return not ext or ext in OPENSLIDE_EXTENSIONS or ext in _image_extensions()
