"""Lazy multi-resolution glimpse sources for whole-slide images.

A glimpse on a 100,000^2 slide costs what it costs on a 10,000^2 one: each patch of the retina is
read from the pyramid level that suits it, and only the pixels under the window are touched.

Public API::

    src = open_source(path)                 # OpenSlide (SVS, TIFF, DICOM...) or OME-Zarr
    src = open_source("procedural:needle?size=131072&seed=3")  # drawn on demand, no file
    src = open_source("s3://bucket/cohort/slide.zarr")  # OME-Zarr on object storage (remote.py)
    g = src.glimpse(loc, spec, units="px")  # (N, k, 3, g, g) float32 in [0, 1]
    mask = tissue_mask(src)                 # thumbnail-based tissue detection
    convert_to_ome_zarr(src_path, dst_path) # parallel, chunked, atomic
    write_synthetic_slide(path, 8192, seed=0)

Every problem with a slide raises :class:`ram_wsi.errors.SlideError` naming the file and the
cause.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SlideError
from ._paths import file_format_ending, is_uri, is_zarr_path
from .array_source import ArraySource
from .base import GlimpseSource
from .cache import clear_caches, set_cache_bytes, set_max_open
from .convert import convert_to_ome_zarr
from .image_source import ImageSource, is_plain_image
from .openslide_source import OpenSlideSource
from .procedural import ProceduralSource, is_procedural, procedural_uri
from .remote import REMOTE_SCHEMES, is_remote, set_storage_options, storage_options
from .synth import write_synthetic_slide
from .tissue import TissueMask, tissue_mask
from .zarr_source import ZarrSource

__all__ = [
    "ArraySource",
    "GlimpseSource",
    "ImageSource",
    "OpenSlideSource",
    "ProceduralSource",
    "TissueMask",
    "ZarrSource",
    "clear_caches",
    "convert_to_ome_zarr",
    "open_source",
    "procedural_uri",
    "set_cache_bytes",
    "set_max_open",
    "set_storage_options",
    "storage_options",
    "tissue_mask",
    "write_synthetic_slide",
]


def open_source(path: str | os.PathLike, **settings: Any) -> GlimpseSource:
    """Open a slide with the backend that suits it: OME-Zarr for a zarr store (a directory with
    ``zarr.json`` or a ``.zarr`` name), OpenSlide for everything else (a DICOM slide may be given
    as one of its files or as its directory); a ``procedural:<kind>?...`` URI is a synthetic
    slide drawn on demand (:class:`ProceduralSource`); an ``s3://``, ``gs://``, ``az://`` or
    ``http(s)://`` URI is an OME-Zarr store read through zarr's FsspecStore
    (:mod:`ram_wsi.slide.remote`; ``storage_options=`` for this source, else the process's).

    Raises:
        SlideError: the path does not exist, is a directory that is neither a zarr store nor a
            DICOM slide, is a URI of another scheme or a bad procedural one, names an
            OpenSlide file on remote storage (convert it), or the backend cannot open it --
            naming the path and the cause.
    """
    if isinstance(path, str) and is_uri(path):
        if is_procedural(path):
            return ProceduralSource(path, **settings)
        if is_remote(path):
            return _open_remote(path, **settings)
        raise SlideError(path, f"unsupported URI scheme {path.split(':', 1)[0]!r} (known: "
                               f"procedural:, {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    p = Path(path)
    if not p.exists():
        raise SlideError(p, "no such file or directory")
    if p.is_file() and p.stat().st_size == 0:
        raise SlideError(p, "empty file (0 bytes): an interrupted copy or download?")
    if is_zarr_path(p):
        return ZarrSource(p, **settings)
    try:
        return OpenSlideSource(p, **settings)
    except SlideError as openslide_failed:
        # As openslide-python's open_slide falls back to ImageSlide: a PNG, JPEG or stripped
        # TIFF is a one-level slide. What Pillow cannot read either keeps OpenSlide's error.
        if not (p.is_file() and is_plain_image(p)):
            raise
        try:
            return ImageSource(p, **settings)
        except SlideError:
            raise openslide_failed from None


def _open_remote(url: str, **settings: Any) -> GlimpseSource:
    """A remote slide: an OME-Zarr store. OpenSlide reads local files only, so a slide file on
    object storage gets the command that converts it; a URI that is no store says so."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        raise SlideError(f"{parts.scheme}://{parts.hostname}{parts.path}",
                         "a user or password in a slide's URI would be written wherever its "
                         "path is (results, manifests, logs); put credentials in the "
                         "environment or a credentials file")
    if parts.query or parts.fragment:
        raise SlideError(url, "a URI with a query (?...) or fragment (#...) cannot address a "
                              "store's objects: name the store itself")
    ext = file_format_ending(parts.path)
    if ext:
        target = url.rstrip("/").rsplit(".", 1)[0] + ".zarr"
        raise SlideError(url, f"OpenSlide reads local files only, so a {ext} file cannot be "
                              "read from remote storage: convert it to OME-Zarr once (copy it "
                              f"here, then `ram-wsi convert SLIDE {target}`) and read the store")
    return ZarrSource(url, **settings)
