"""What a synthetic scene is: a deterministic slide, drawn at any level and tile, and the level
arithmetic every scene, writer and procedural source shares.

A scene kind is one subclass of :class:`Scene` plus one row in
:data:`ram_wsi.slide.synth.kinds.SCENE_KINDS`; the pyramid writers
(:mod:`ram_wsi.slide.synth.pyramid`), :func:`ram_wsi.slide.synth.write_synthetic_slide` and
:class:`ram_wsi.slide.procedural.ProceduralSource` then serve it with no code of their own, and
a written file equals the procedural slide of the same parameters because both take every tile
from :meth:`Scene.tile_pixels`.

The interface (what a new kind writes; everything else is inherited):

* class attributes ``kind`` (its name in URIs and sidecars), ``class_names`` (one per label;
  their number bounds ``label=``) and ``params`` (its own parameters and their defaults: keyword
  arguments of ``write_synthetic_slide`` and keys of ``procedural:`` URIs); ``text_params``
  (those of them whose values are text); ``needs_mpp`` / ``default_mpp`` (a kind sized in
  micrometres gets ``mpp=``, and URIs of the kind default to ``default_mpp``);
* ``__init__(width, height, *, seed, label, tile, data_dir=None, **params)``: call
  ``Scene.__init__(self, width, height, tile)``, set ``self.label`` (drawn from ``seed`` when
  ``label`` is None); ``data_dir`` is where real data the scene draws from lies (MNIST digits,
  tissue tiles), None for the kind's default;
* :meth:`Scene.draw`: the ``(tile, tile, 3)`` uint8 pixels of one tile of one level, white past
  the level's edge (:meth:`Scene.whiten_outside` does that);
* :meth:`Scene.meta`: what the sidecar says about the slide (extend the base's geometry).

Optional, for speed on large slides: :meth:`Scene.classify` may call tiles white
(:data:`WHITE`) or a level's shared texture (:data:`TEXTURE`, then :meth:`Scene.texture` gives
its pixels for each of ``VARIANTS`` variants, :meth:`Scene.variant` picks one per tile);
writers then encode such tiles once per level and variant, and procedural sources keep one copy.
The default classifies every tile :data:`COMPOSE` (drawn by :meth:`Scene.draw`).
:meth:`Scene.shared_key` may name tiles that equal other scenes' (one copy per process).

Levels halve (rounding up) until a level fits in one tile: :func:`level_shape`,
:func:`level_count`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = ["COMPOSE", "TEXTURE", "WHITE", "PyramidScene", "Scene", "level_count",
           "level_shape", "shared_tile", "white_tile"]

WHITE, TEXTURE, COMPOSE = 0, 1, 2  # tile classes (Scene.classify)
WHITE_VALUE = 255
CLASS_BLOCK = 8  # Scene.tile_class classifies blocks of 8 x 8 tiles at once

_SHARED: dict[tuple, np.ndarray] = {}
_SHARED_LOCK = threading.Lock()


def level_shape(width: int, height: int, level: int) -> tuple[int, int]:
    """``(W_l, H_l)`` of a synthetic slide's level ``l`` (halving, rounding up)."""
    return -(-int(width) // 2**level), -(-int(height) // 2**level)


def level_count(width: int, height: int, tile: int) -> int:
    """Levels a synthetic slide has: halve until the level fits in one tile."""
    n = 1
    while max(level_shape(width, height, n - 1)) > tile:
        n += 1
    return n


def shared_tile(key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The process-wide read-only array for ``key`` (:meth:`Scene.shared_key`), made once:
    thousands of procedural slides then share a few MB of tiles instead of holding ~40 MB each."""
    out = _SHARED.get(key)
    if out is None:
        out = make()
        out.flags.writeable = False
        with _SHARED_LOCK:
            out = _SHARED.setdefault(key, out)
    return out


def white_tile(tile: int) -> np.ndarray:
    """A new ``(tile, tile, 3)`` uint8 white tile."""
    return np.full((tile, tile, 3), WHITE_VALUE, np.uint8)


class PyramidScene(Protocol):
    """What the pyramid writers read of a scene (:class:`Scene` provides all of it)."""

    tile: int

    def levels(self) -> int: ...

    def level_shape(self, level: int) -> tuple[int, int]: ...

    def classify(self, level: int) -> np.ndarray: ...

    def variant(self, level: int, tx: np.ndarray, ty: np.ndarray) -> np.ndarray: ...

    def tile_pixels(self, level: int, tx: int, ty: int, cls: int | None = None,
                    variant: int | None = None) -> np.ndarray: ...


class Scene:
    """A deterministic synthetic slide of ``width x height`` level-0 pixels in ``tile`` tiles.

    Subclasses draw (:meth:`draw`) and describe (:meth:`meta`) it; this base owns the geometry
    and which pixels a tile gets (:meth:`tile_pixels`), so that writers and procedural sources
    agree. See the module docstring for the interface.
    """

    kind: ClassVar[str] = ""
    class_names: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[dict[str, Any]] = {}
    # Parameters whose values are text (a folder, a pool name), not numbers, in URIs.
    text_params: ClassVar[tuple[str, ...]] = ()
    param_choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # text parameters' allowed values
    # A kind whose geometry is physical (sizes in micrometres) is given the slide's mpp as
    # ``mpp=`` (its default_mpp when the slide states none); the others are not.
    needs_mpp: ClassVar[bool] = False
    default_mpp: ClassVar[float] = 0.25
    VARIANTS: ClassVar[int] = 1
    # A scene that composes any window of a level (:meth:`region`) is read so by procedural
    # sources: only the pixels asked for, not the blocks under them.
    draws_regions: ClassVar[bool] = False
    label: int

    def __init__(self, width: int, height: int, tile: int):
        self.w, self.h, self.tile = int(width), int(height), int(tile)
        self._tiles_u8: dict[tuple[int, int], np.ndarray] = {}
        self._classes: dict[tuple[int, int, int], np.ndarray] = {}

    # ----------------------------------------------------------------------- geometry
    def levels(self) -> int:
        return level_count(self.w, self.h, self.tile)

    def level_shape(self, level: int) -> tuple[int, int]:
        return level_shape(self.w, self.h, level)

    def tile_grid(self, level: int) -> tuple[int, int]:
        """``(columns, rows)`` of tiles of ``level``."""
        lw, lh = self.level_shape(level)
        return -(-lw // self.tile), -(-lh // self.tile)

    def whiten_outside(self, out: np.ndarray, level: int, tx: int, ty: int) -> np.ndarray:
        """``out`` (tile ``(tx, ty)`` of ``level``) white past the level's right and bottom
        edges, as readers pad."""
        t = self.tile
        lw, lh = self.level_shape(level)
        if (tx + 1) * t > lw:
            out[:, lw - tx * t:] = WHITE_VALUE
        if (ty + 1) * t > lh:
            out[lh - ty * t:, :] = WHITE_VALUE
        return out

    # ----------------------------------------------------------------------- hooks
    def draw(self, level: int, tx: int, ty: int) -> np.ndarray:
        """The ``(tile, tile, 3)`` uint8 tile ``(tx, ty)`` of ``level`` (white outside)."""
        raise NotImplementedError(f"{type(self).__name__}.draw")

    def region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The ``(h, w, 3)`` uint8 pixels of ``level`` from level pixel ``(x, y)`` (inside the
        level): for scenes with ``draws_regions``; equal to the same window of the tiles."""
        raise NotImplementedError(f"{type(self).__name__} draws tiles, not regions")

    def classify(self, level: int, rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
        """Per tile of ``level``: :data:`WHITE`, :data:`TEXTURE` or :data:`COMPOSE` (int8).
        ``rows`` / ``cols``: only tile rows ``[r0, r1)`` / columns ``[c0, c1)``, with the same
        values as that part of the whole level. This default composes every tile."""
        r0, r1, c0, c1 = self.tile_span(level, rows, cols)
        return np.full((r1 - r0, c1 - c0), COMPOSE, np.int8)

    def texture(self, level: int, variant: int) -> np.ndarray:
        """The float ``(tile, tile, 3)`` pixels of a :data:`TEXTURE` tile of ``level``."""
        raise NotImplementedError(f"{type(self).__name__} classifies no texture tiles")

    def variant(self, level: int, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        """Which of ``VARIANTS`` textures tile ``(tx, ty)`` of ``level`` shows (a hash)."""
        return ((tx * 73856093) ^ (ty * 19349663) ^ (level * 83492791)) % self.VARIANTS

    def shared_key(self, level: int, cls: int, variant: int | None) -> tuple | None:
        """A process-wide key for a white or texture tile (equal keys, equal pixels), None when
        the tile is this scene's own. White tiles are shared by every scene."""
        return ("white", self.tile) if cls == WHITE else None

    def meta(self, *, seed: int, mpp: float | None) -> dict[str, Any]:
        """What a sidecar says about the slide itself (not about a file): the geometry and the
        kind; subclasses add the label's meaning and the target."""
        return {"seed": seed, "label": self.label, "size": [self.w, self.h], "mpp": mpp,
                "levels": self.levels(), "tile": self.tile, "kind": self.kind}

    # ----------------------------------------------------------------------- tiles
    def tile_span(self, level: int, rows: tuple[int, int] | None,
                  cols: tuple[int, int] | None) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)``: ``rows`` / ``cols`` clipped to ``level``'s tiles (all when
        None)."""
        nx, ny = self.tile_grid(level)
        r0, r1 = (0, ny) if rows is None else (max(0, int(rows[0])), min(ny, int(rows[1])))
        c0, c1 = (0, nx) if cols is None else (max(0, int(cols[0])), min(nx, int(cols[1])))
        return r0, max(r1, r0), c0, max(c1, c0)

    def tile_class(self, level: int, tx: int, ty: int) -> tuple[int, int]:
        """``(class, variant)`` of tile ``(tx, ty)`` of ``level`` (:meth:`classify`'s class,
        computed for a block of ``CLASS_BLOCK^2`` tiles at a time and kept)."""
        b = CLASS_BLOCK
        by, bx = int(ty) // b, int(tx) // b
        cls = self._classes.get((level, by, bx))
        if cls is None:
            cls = self._classes[(level, by, bx)] = self.classify(
                level, (by * b, (by + 1) * b), (bx * b, (bx + 1) * b))
        return (int(cls[int(ty) - by * b, int(tx) - bx * b]),
                int(self.variant(level, np.int64(tx), np.int64(ty))))

    def tile_pixels(self, level: int, tx: int, ty: int, cls: int | None = None,
                    variant: int | None = None) -> np.ndarray:
        """The ``(tile, tile, 3)`` uint8 pixels of tile ``(tx, ty)`` of ``level``, chosen as
        every writer and :class:`~ram_wsi.slide.procedural.ProceduralSource` choose them:
        :data:`WHITE` the white tile, :data:`TEXTURE` the level's texture ``variant`` (both
        shared and read-only), :data:`COMPOSE` :meth:`draw`. ``cls`` / ``variant``:
        :meth:`tile_class`'s, when known."""
        if cls is None:
            cls, variant = self.tile_class(level, tx, ty)
        if cls == COMPOSE:
            return self.draw(level, tx, ty)
        if cls == TEXTURE and variant is None:
            variant = int(self.variant(level, np.int64(tx), np.int64(ty)))
        return self._repeated_tile(level, cls, variant)

    def _repeated_tile(self, level: int, cls: int, variant: int | None) -> np.ndarray:
        """A white or texture tile: one read-only copy per process (:meth:`shared_key`) or per
        scene."""
        t = self.tile

        def make() -> np.ndarray:
            return (white_tile(t) if cls == WHITE else
                    np.clip(self.texture(level, int(variant)) + 0.5, 0, 255).astype(np.uint8))

        shared = self.shared_key(level, cls, variant)
        if shared is not None:
            return shared_tile(("hwc", *shared), make)
        key = (-1, 0) if cls == WHITE else (level, int(variant))
        out = self._tiles_u8.get(key)
        if out is None:
            out = make()
            out.flags.writeable = False
            self._tiles_u8[key] = out
        return out
