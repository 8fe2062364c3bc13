"""The table of scene kinds: a kind's name -> its :class:`~ram_wsi.slide.synth.scene.Scene`
subclass. A new kind is one row here (and its module); ``write_synthetic_slide``, the
``procedural:`` URIs and ``make_slides.py`` read their kinds, labels and parameters from it."""

from __future__ import annotations

import os
from typing import Any

from .digit import DigitScene
from .mosaic import TissueScene
from .needle import NeedleScene
from .scene import Scene

__all__ = ["KINDS", "SCENE_KINDS", "make_scene", "scene_parameters", "text_parameters"]

SCENE_KINDS: dict[str, type[Scene]] = {
    DigitScene.kind: DigitScene,
    NeedleScene.kind: NeedleScene,
    TissueScene.kind: TissueScene,
}
KINDS = tuple(SCENE_KINDS)


def scene_parameters() -> dict[str, Any]:
    """Every kind's own parameters and their defaults (the first kind's default where two
    kinds share a name), kinds in table order."""
    out: dict[str, Any] = {}
    for cls in SCENE_KINDS.values():
        for key, default in cls.params.items():
            out.setdefault(key, default)
    return out


def text_parameters() -> set[str]:
    """The parameters, of any kind, whose values are text (``procedural:`` URIs keep them as
    given)."""
    return {k for cls in SCENE_KINDS.values() for k in cls.text_params}


def make_scene(kind: str, width: int, height: int, *, seed: int, label: int | None, tile: int,
               data_dir: str | os.PathLike | None = None, mpp: float | None = None,
               **params: Any) -> Scene:
    """The scene of ``kind`` with ``params``; parameters of other kinds are ignored (their
    defaults say nothing about this one), names no kind knows are refused. ``mpp`` (the
    slide's micrometres per pixel, None: none stated) reaches kinds that size things in
    micrometres (``needs_mpp``).

    Raises:
        ValueError: an unknown kind or parameter, or a value the kind refuses.
    """
    cls = SCENE_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = set(params) - set(scene_parameters())
    if unknown:
        raise ValueError(f"unknown scene parameter(s) {sorted(unknown)} "
                         f"(known: {', '.join(scene_parameters())})")
    own = {k: v for k, v in params.items() if k in cls.params}
    if cls.needs_mpp:
        own["mpp"] = mpp
    return cls(int(width), int(height), seed=seed, label=label, tile=tile, data_dir=data_dir,
               **own)
