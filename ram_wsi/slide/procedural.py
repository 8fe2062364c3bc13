"""A glimpse source that synthesises its pixels on demand: training on 131,072^2 synthetic
slides without writing (or reading) a byte of them.

A slide is named by a URI, ``procedural:<kind>?size=16384&seed=3&label=1&tile=256&mpp=0.25``,
with the keys and defaults of :func:`~ram_wsi.slide.synth.write_synthetic_slide`:

============= ======================================= =========================================
key           value                                   default
============= ======================================= =========================================
size          ``S`` or ``WxH`` level-0 pixels          required
seed          integer                                 0
label         class (digit 0-9, needle 0/1, tissue    none (drawn from the seed)
              0 benign / 1 carcinoma); ``none``
tile          tile size, a multiple of 16             256
mpp           micrometres per pixel; ``none``          0.25 (tissue: 0.5)
target_size   digit: width of the digit               none (``min(320, S / 8)``)
lesion_size   needle: diameter of the lesion          1024
period        needle: period of its pattern           8
tissue_blobs  number of tissue blobs                  none (drawn from the seed)
tiles         tissue: the folder of class tiles       none (``../shared/data/tissue/crc_tiles``)
pool          tissue: train, val or test tiles        train
split_seed    tissue: the seed of the tile split      0
region_min_um tissue: the region's least diameter     1000.0
region_max_um tissue: its largest                     3000.0
adenoma       tissue: P(adenoma region | benign)      0.5
tissue_um     tissue: the tissue's largest extent     20000.0
============= ======================================= =========================================

Its pixels are those :func:`write_synthetic_slide` writes for the same parameters, by
construction: both take every tile from :meth:`ram_wsi.slide.synth.scene.Scene.tile_pixels` (white,
one of a level's few texture tiles, or composed), and the geometry (levels, tiles, mpp, 2x
downsamples) is that of the OME-Zarr store the writer makes. White and texture tiles are made
once and shared -- per process for needle slides (their textures come from one library, so
thousands of training slides share a few MB), per source for digit slides -- and never put in
the block cache, where they would each count as a separate block; composed tiles go through the
process's block cache like any decoded block.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any
from urllib.parse import parse_qsl, quote

import numpy as np

from ..errors import SlideError
from .base import GlimpseSource, SlideInfo
from .synth.kinds import KINDS, SCENE_KINDS, make_scene, scene_parameters, text_parameters
from .synth.scene import Scene, level_count, level_shape, shared_tile

__all__ = ["SCHEME", "ProceduralSource", "is_procedural", "parse_procedural_uri",
           "procedural_uri"]

SCHEME = "procedural"

# The keys every kind has, with the defaults of write_synthetic_slide.
_COMMON: dict[str, Any] = {"size": None, "seed": 0, "label": None, "tile": 256, "mpp": 0.25}
# The canonical order of the first kinds' own keys (their URIs keep their form); the keys of a
# kind added later follow, in the kinds table's order.
_FIRST_KIND_KEYS = ("target_size", "lesion_size", "period", "tissue_blobs")


def _uri_defaults() -> dict[str, Any]:
    """Every URI key in canonical order, with its default (a kind's from its ``params``)."""
    kind_keys = scene_parameters()
    order = ([k for k in _FIRST_KIND_KEYS if k in kind_keys]
             + [k for k in kind_keys if k not in _FIRST_KIND_KEYS])
    return {**_COMMON, **{k: kind_keys[k] for k in order}}


_DEFAULTS = _uri_defaults()
_TEXT = text_parameters()
_SCENE_LOCK = threading.Lock()


def is_procedural(path: str | os.PathLike) -> bool:
    """A ``procedural:`` URI (any kind, valid or not)."""
    return isinstance(path, str) and path.lower().startswith(SCHEME + ":")


def _int(uri: str, key: str, text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise SlideError(uri, f"{key}={text!r} is not an integer") from None
    if v < lo:
        raise SlideError(uri, f"{key}={v} must be >= {lo}")
    return v


def _size(uri: str, text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise SlideError(uri, f"size={text!r} is not S or WxH")
    w, h = (_int(uri, "size", v, 1) for v in (parts if len(parts) == 2 else parts * 2))
    return w, h


def _check(uri: str, kind: str, p: dict[str, Any]) -> dict[str, Any]:
    if p["size"] is None:
        raise SlideError(uri, "no size= (S or WxH level-0 pixels)")
    if p["tile"] % 16:
        raise SlideError(uri, f"tile={p['tile']} is not a multiple of 16")
    if p["label"] is not None:
        n = len(SCENE_KINDS[kind].class_names)
        if not 0 <= p["label"] < n:
            raise SlideError(uri, f"label={p['label']} is not a {kind} class (0..{n - 1})")
    if p["mpp"] is not None and not (math.isfinite(p["mpp"]) and p["mpp"] > 0):
        raise SlideError(uri, f"mpp={p['mpp']} must be a positive number or 'none'")
    for key, allowed in SCENE_KINDS[kind].param_choices.items():
        if p[key] not in allowed:
            raise SlideError(uri, f"{key}={p[key]!r} must be one of {', '.join(allowed)}")
    return p


def _value(uri: str, key: str, text: str) -> Any:
    """The value of ``key=text``: ``size`` S or WxH; ``none`` (or empty) for a key whose default
    is None; a float where the default is one (``mpp``); else an integer (``seed`` and
    ``label`` >= 0, ``tile`` >= 16, others >= 1)."""
    default = _DEFAULTS[key]
    if key == "size":
        return _size(uri, text)
    if key in _TEXT:
        return None if text.lower() in ("none", "") else text
    if text.lower() in ("none", "") and (default is None or key == "mpp"):
        return None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise SlideError(uri, f"{key}={text!r} is not a number or 'none'") from None
    return _int(uri, key, text, {"seed": 0, "label": 0, "tile": 16}.get(key, 1))


def _kind_defaults(kind: str) -> dict[str, Any]:
    """The keys of ``kind``'s URIs (the common ones, then its own) with their defaults (its
    own ``default_mpp``), in canonical order."""
    own = SCENE_KINDS[kind].params
    return {**{k: v for k, v in _DEFAULTS.items() if k in _COMMON or k in own},
            "mpp": SCENE_KINDS[kind].default_mpp}


def parse_procedural_uri(uri: str) -> dict[str, Any]:
    """``{"kind", "size": (W, H), "seed", "label", "tile", "mpp", <the kind's own keys>}``
    (defaults filled in) of a ``procedural:`` URI; e.g. a needle's ``lesion_size``,
    ``period``, ``tissue_blobs``.

    Raises:
        SlideError: naming the URI, for another scheme, an unknown kind or key, a key of
            another kind, a key given twice, a missing size, or a bad value.
    """
    uri = os.fspath(uri)
    if not is_procedural(uri):
        raise SlideError(uri, f"not a {SCHEME}: URI")
    body = uri[len(SCHEME) + 1:]
    kind, _, query = body.partition("?")
    if kind not in KINDS:
        raise SlideError(uri, f"unknown procedural kind {kind!r} (known: {', '.join(KINDS)})")
    p: dict[str, Any] = _kind_defaults(kind)
    seen: set[str] = set()
    try:
        items = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise SlideError(uri, f"malformed query: {e}") from None
    for key, text in items:
        if key not in _DEFAULTS:
            raise SlideError(uri, f"unknown key {key!r} (known: {', '.join(_DEFAULTS)})")
        if key not in p:
            raise SlideError(uri, f"key {key!r} does not apply to {kind} slides (theirs: "
                                  f"{', '.join(p)})")
        if key in seen:
            raise SlideError(uri, f"key {key!r} given twice")
        seen.add(key)
        p[key] = _value(uri, key, text)
    return {"kind": kind, **_check(uri, kind, p)}


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, (str, os.PathLike)):
        return quote(os.fspath(v), safe="/:~._-")
    if isinstance(v, float):
        return repr(v)
    return str(int(v))


def procedural_uri(kind: str, size: int | tuple[int, int], *, seed: int,
                   label: int | None = None, **params: Any) -> str:
    """The canonical URI of a procedural slide: keys in a fixed order (``size``, ``seed``,
    ``label``, ``tile``, ``mpp``, ``target_size``, ``lesion_size``, ``period``,
    ``tissue_blobs``), those at their default left out, so equal slides have equal URIs.

    Raises:
        SlideError: an unknown kind or key, or a bad value (as :func:`parse_procedural_uri`).
    """
    w, h = (size, size) if np.isscalar(size) else size
    values = {"size": f"{int(w)}" if int(w) == int(h) else f"{int(w)}x{int(h)}",
              "seed": str(int(seed))}
    unknown = set(params) - set(_DEFAULTS)
    draft = f"{SCHEME}:{kind}"
    if unknown:
        raise SlideError(draft, f"unknown key(s) {sorted(unknown)} (known: {', '.join(_DEFAULTS)})")
    given = {"label": label, **params}
    if "mpp" in given and given["mpp"] is not None:
        given["mpp"] = float(given["mpp"])
    if kind not in SCENE_KINDS:
        raise SlideError(draft, f"unknown procedural kind {kind!r} (known: {', '.join(KINDS)})")
    defaults = _kind_defaults(kind)
    foreign = sorted(k for k in given if k not in defaults and given[k] != _DEFAULTS[k])
    if foreign:  # another kind's key at its default says nothing; set, it is a mistake
        raise SlideError(draft, f"key(s) {foreign} do not apply to {kind} slides")
    for key in list(defaults)[2:]:
        if key in given and given[key] != defaults[key]:
            values[key] = _fmt(given[key])
    uri = draft + "?" + "&".join(f"{k}={v}" for k, v in values.items())
    parse_procedural_uri(uri)  # validate
    return uri


class ProceduralSource(GlimpseSource):
    """The synthetic slide a ``procedural:`` URI names, drawn tile by tile when read.

    ``path`` is the URI as given (:func:`procedural_uri` makes canonical ones); ``mtime()`` is
    0 (the slide never changes). The scene (tissue field, textures, target) is built on first
    use, once per source; pickling carries the URI only.

    Raises:
        SlideError: naming the URI, when it does not parse (:func:`parse_procedural_uri`).
    """

    backend = "procedural"
    _params: dict[str, Any] | None = None
    _scene_obj: Scene | None = None
    _shared: dict[tuple, np.ndarray] | None = None

    def __init__(self, uri: str | os.PathLike, **settings: Any):
        super().__init__(os.fspath(uri), **settings)
        _ = self.info  # parse once to validate (an unpickled copy does not: base._rebuild)

    # ----------------------------------------------------------------------- the slide
    @property
    def params(self) -> dict[str, Any]:
        """The parsed URI (:func:`parse_procedural_uri`)."""
        if self._params is None:
            self._params = parse_procedural_uri(self._path)
        return self._params

    @property
    def scene(self) -> Scene:
        """The scene the URI names (:func:`~ram_wsi.slide.synth.kinds.make_scene`), built
        once; real data it draws from (MNIST digits) comes from the kind's default place."""
        if self._scene_obj is None:
            with _SCENE_LOCK:
                if self._scene_obj is None:
                    p = self.params
                    kind_params = {k: v for k, v in p.items()
                                   if k not in _COMMON and k != "kind"}
                    self._scene_obj = make_scene(p["kind"], *p["size"], seed=p["seed"],
                                                 label=p["label"], tile=p["tile"],
                                                 mpp=p["mpp"], **kind_params)
        return self._scene_obj

    @property
    def target(self) -> dict[str, Any]:
        """What the sidecar JSON of :func:`write_synthetic_slide` would hold about this slide
        (``label``, ``target_center_px``, ``target_center_loc``, ``target_size_px``, ``kind``,
        geometry; a needle's ``class_names``, ``lesion_size_px``, ``period_px``, ...), plus
        ``uri``. Nothing is written."""
        p = self.params
        return {"uri": self._path, **self.scene.meta(seed=p["seed"], mpp=p["mpp"])}

    # ----------------------------------------------------------------------- GlimpseSource
    def mtime(self) -> float:
        return 0.0

    def _open_info(self) -> SlideInfo:
        p = self.params
        w, h = p["size"]
        t = p["tile"]
        n = level_count(w, h, t)
        dims = [level_shape(w, h, lv) for lv in range(n)]
        mpp = None if p["mpp"] is None else (float(p["mpp"]), float(p["mpp"]))
        return SlideInfo(dimensions=dims[0], level_dimensions=dims, block_sizes=[(t, t)] * n,
                         mpp=mpp, axis_downsamples=[(2.0**lv, 2.0**lv) for lv in range(n)],
                         properties={"procedural.kind": p["kind"], "procedural.uri": self._path})

    def _assemble(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                  use_cache: bool = True) -> np.ndarray:
        """Regions of a scene that composes any window (:meth:`Scene.region`) are drawn
        directly -- only their own pixels, one per region, counted as decoded -- rather than
        as the blocks under them: a mosaic's tissue never repeats, so a block cache rarely
        hits, and a 32 px glimpse region cost up to four 64 px blocks. Other scenes read
        blocks."""
        scene = self.scene
        if not scene.draws_regions:
            return super()._assemble(level, x0, y0, w, h, use_cache)
        lw, lh = self.info.level_dimensions[level]
        out = np.full((len(x0), 3, h, w), 255, np.uint8)
        for i, (x, y) in enumerate(zip(x0.tolist(), y0.tolist())):
            xa, xb, ya, yb = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
            if xa >= xb or ya >= yb:
                continue
            part = scene.region(level, xa, ya, xb - xa, yb - ya)
            out[i, :, ya - y:yb - y, xa - x:xb - x] = part.transpose(2, 0, 1)
            self._count(blocks_decoded=1, pixels_decoded=(xb - xa) * (yb - ya))
        return out

    def _in_level(self, level: int, bx: int, by: int) -> bool:
        lw, lh = self.info.level_dimensions[level]
        t = self.params["tile"]
        return 0 <= bx * t < lw and 0 <= by * t < lh

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        if not self._in_level(level, bx, by):
            t = self.params["tile"]
            return np.full((3, t, t), 255, np.uint8)
        return np.ascontiguousarray(self.scene.tile_pixels(level, bx, by).transpose(2, 0, 1))

    def _block(self, level: int, bx: int, by: int, use_cache: bool = True) -> np.ndarray:
        # White and texture tiles repeat all over a level: one read-only copy per source.
        if not self._in_level(level, bx, by):
            return super()._block(level, bx, by, use_cache)
        scene = self.scene
        cls, var = scene.tile_class(level, bx, by)
        if cls == 2:
            return super()._block(level, bx, by, use_cache)
        key = (0,) if cls == 0 else (1, level, var)
        if self._shared is None:
            self._shared = {}
        blk = self._shared.get(key)
        if blk is None:
            def make() -> np.ndarray:
                return np.ascontiguousarray(
                    scene.tile_pixels(level, bx, by, cls, var).transpose(2, 0, 1))

            glob = scene.shared_key(level, cls, var)
            if glob is not None:  # one copy per process, however many slides
                blk = shared_tile(("chw", *glob), make)
            else:
                blk = make()
                blk.flags.writeable = False
            self._shared[key] = blk
            self._count(blocks_decoded=1, pixels_decoded=blk.shape[-1] * blk.shape[-2])
        return blk
