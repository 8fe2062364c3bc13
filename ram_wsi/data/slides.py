"""Slides as episodes: what one slide gives an agent, computed once per slide per process.

A :class:`SlideView` is everything an episode on a slide needs besides the glimpses:

* one thumbnail read (``thumb_size`` px on its longest side, from a coarse level: a cost that
  does not grow with the slide) gives the tissue mask, the frame and the context image;
* the :class:`SlideFrame`: the square of level-0 pixels that the agent's locations
  ``[-1, 1]^2`` span -- the tissue's bounding box (plus a margin), not the glass, so that the
  policy's resolution is spent where tissue is;
* the context image: the frame resampled to ``S x S`` (white outside the slide), uint8, so that
  what the policy saw travels to a learner exactly;
* the target (synthetic slides only: a procedural source's ``target`` or the writer's
  ``<path>.json`` sidecar), for the on-target fraction.

:class:`SlideSet` holds the views of one split; :class:`SlideSensor` reads an episode batch's
glimpses from them (:func:`ram_wsi.data.episodes.slide_episodes` builds the batches, so that
episodes.py owns :class:`~ram_wsi.data.episodes.Episodes` and this module needs none of it).
Views are built in the process that reads the slide (a rollout actor); only paths travel.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..retina import RetinaSpec
from .manifest import SlideRecord

PREVIEW_SIZE = 256
MASK_SIZE = 256  # the tissue mask's longest side: enough for the frame and tissue starts

__all__ = ["PREVIEW_SIZE", "SlideFrame", "SlideSensor", "SlideSet", "SlideView", "resolve_units"]


@dataclass(frozen=True)
class SlideFrame:
    """The rectangle ``[x0, x0 + w) x [y0, y0 + h)`` of level-0 pixels that locations
    ``[-1, 1]^2`` span, on a slide of ``(width, height)`` pixels."""

    x0: float
    y0: float
    w: float
    h: float
    width: int
    height: int

    @classmethod
    def whole(cls, width: int, height: int) -> SlideFrame:
        """The whole slide (the paper's convention: ``[-1, 1]^2`` is the image)."""
        return cls(0.0, 0.0, float(width), float(height), int(width), int(height))

    @classmethod
    def around(cls, mask: np.ndarray, width: int, height: int, margin: float = 0.05
               ) -> SlideFrame:
        """The square around the tissue of a ``(h, w)`` boolean thumbnail mask of the slide,
        widened by ``margin`` of its side; the whole slide when there is no tissue."""
        ys, xs = np.nonzero(mask)
        if xs.size == 0:
            return cls.whole(width, height)
        mh, mw = mask.shape
        sx, sy = width / mw, height / mh
        x0, x1 = xs.min() * sx, (xs.max() + 1) * sx
        y0, y1 = ys.min() * sy, (ys.max() + 1) * sy
        side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        return cls(cx - side / 2, cy - side / 2, side, side, int(width), int(height))

    def to_pixels(self, loc: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` frame locations -> level-0 pixel ``(x, y)``."""
        x = self.x0 + (loc[:, 0] + 1.0) * 0.5 * self.w
        y = self.y0 + (loc[:, 1] + 1.0) * 0.5 * self.h
        return torch.stack([x, y], -1)

    def to_slide(self, loc: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` frame locations -> the slide's own ``[-1, 1]`` (what sources take)."""
        px = self.to_pixels(loc.double())
        return torch.stack([px[:, 0] / self.width * 2 - 1, px[:, 1] / self.height * 2 - 1], -1)

    def from_slide(self, loc: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The slide's ``[-1, 1]`` -> frame locations."""
        loc = torch.as_tensor(loc, dtype=torch.float64)
        px = (loc[:, 0] + 1) * 0.5 * self.width
        py = (loc[:, 1] + 1) * 0.5 * self.height
        return torch.stack([(px - self.x0) / self.w * 2 - 1, (py - self.y0) / self.h * 2 - 1], -1)

    def as_dict(self) -> dict[str, float]:
        return {"x0": self.x0, "y0": self.y0, "w": self.w, "h": self.h}


def _crop_resize(thumb: np.ndarray, frame: SlideFrame, size: int) -> np.ndarray:
    """The frame's part of an ``(h, w, 3)`` thumbnail of the whole slide, resampled to
    ``(3, size, size)`` uint8 (white outside the slide)."""
    from PIL import Image

    th, tw = thumb.shape[:2]
    sx, sy = tw / frame.width, th / frame.height
    box = (frame.x0 * sx, frame.y0 * sy, (frame.x0 + frame.w) * sx, (frame.y0 + frame.h) * sy)
    # Pad with white so that a box reaching outside the slide reads white there.
    pad = int(np.ceil(max(0.0, -box[0], -box[1], box[2] - tw, box[3] - th))) + 1
    img = Image.fromarray(np.pad(thumb, ((pad, pad), (pad, pad), (0, 0)),
                                 constant_values=255))
    box = tuple(v + pad for v in box)
    out = img.resize((size, size), Image.Resampling.BOX, box=box)
    return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))


def _at_most(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` box-downsampled by an integer factor until its longest side is <= ``size``."""
    f = -(-max(img.shape[:2]) // size)
    if f <= 1:
        return img
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, 3).mean((1, 3)).astype(np.uint8)


def _target_of(source: Any) -> dict[str, Any] | None:
    """The known target of a slide: a synthetic one's (a procedural source's ``target``, or
    the writer's ``<path>.json`` sidecar, which a benign mosaic without a region has too), or
    an annotation mask beside the image, ``<stem>_anno.png`` (GlaS: nonzero pixels are glands,
    at level-0 size); None when nothing is known."""
    target = getattr(source, "target", None)
    if isinstance(target, dict):
        return target
    path = source.path
    if path is None:
        return None
    side = Path(str(path) + ".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return None
        if "target_center_px" in meta or "region_cells" in meta:
            return meta
    mask = Path(path).with_name(Path(path).stem + "_anno.png")
    return {"mask_path": str(mask)} if mask.is_file() else None


def _mask_hits(target: dict[str, Any], px: torch.Tensor) -> torch.Tensor:
    """``(N,)`` whether each level-0 point ``px`` lies on a nonzero pixel of the target's
    annotation mask (read once, kept in the target)."""
    mask = target.get("mask")
    if mask is None:
        from PIL import Image

        with Image.open(target["mask_path"]) as im:
            mask = target["mask"] = np.asarray(im) > 0
    h, w = mask.shape[:2]
    ix, iy = torch.floor(px[:, 0]).long(), torch.floor(px[:, 1]).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    hit = torch.from_numpy(mask[iy.clamp(0, h - 1).numpy(), ix.clamp(0, w - 1).numpy()])
    return hit & inside


@dataclass
class SlideView:
    """One slide as an agent meets it (see the module docstring)."""

    source: Any
    frame: SlideFrame
    mask: Any  # TissueMask over the whole slide
    context: torch.Tensor | None  # (3, S, S) uint8
    target: dict[str, Any] | None
    open_counters: dict[str, int]  # what opening it cost (the thumbnail read)
    open_seconds: float  # and how long: open, thumbnail, mask, frame, context
    preview: torch.Tensor | None  # (3, P, P) uint8: the frame for figures (P = PREVIEW_SIZE)
    stain: Any = None  # a StainNormaliser applied to every glimpse (data.slides.stain), or None

    def start(self, n: int, rng: np.random.Generator, rule: str) -> torch.Tensor:
        """``(n, 2)`` first locations (frame coordinates): on tissue, or uniform."""
        if rule == "uniform":
            return torch.from_numpy(rng.uniform(-1, 1, size=(n, 2))).float()
        return self.frame.from_slide(self.mask.sample(n, rng)).float().clamp_(-1, 1)

    def on_target(self, loc: torch.Tensor) -> torch.Tensor | None:
        """Boolean ``(N,)``: is each frame location on the target (None: no target known, or
        a slide without one). A tissue mosaic's target is its region's cells (exact); an
        annotation mask's, its nonzero pixels (GlaS: the glands); other synthetic slides' the
        box ``target_center_px +- target_size_px / 2`` (a size or a ``[width, height]``)."""
        t = self.target
        if t is not None and "mask_path" in t:  # an annotation mask: on a gland or not
            return _mask_hits(t, self.frame.to_pixels(loc.double()))
        if t is None or t.get("target_center_px") is None:
            return None
        px = self.frame.to_pixels(loc.double())
        if t.get("region_cells"):
            cell = float(t["cell_px"])
            cells = {(int(x), int(y)) for x, y in t["region_cells"]}
            idx = torch.floor(px / cell).long().tolist()
            return torch.tensor([(x, y) in cells for x, y in idx], dtype=torch.bool)
        cx, cy = t["target_center_px"]
        hx, hy = 0.5 * np.broadcast_to(np.asarray(t.get("target_size_px", 0), float), (2,))
        return ((px[:, 0] - cx).abs() <= hx) & ((px[:, 1] - cy).abs() <= hy)

    def glimpse_labels(self, loc: torch.Tensor, label: int) -> torch.Tensor:
        """``(N,)`` int64: what lies under each frame location of an episode on this slide of
        class ``label``: ``label + 1`` on its lesion, 0 elsewhere, -1 when the slide carries no
        annotation (a real slide) -- the targets of ``model.glimpse_aux``'s head."""
        if self.target is None:
            return torch.full((loc.shape[0],), -1, dtype=torch.long)
        hit = self.on_target(loc)
        if hit is None:  # annotated, without a lesion (a benign mosaic without adenoma)
            return torch.zeros(loc.shape[0], dtype=torch.long)
        return torch.where(hit, int(label) + 1, 0).long()

    def on_tissue(self, loc: torch.Tensor) -> np.ndarray:
        return self.mask.contains(self.frame.to_slide(loc).numpy())


def open_view(path: str, *, frame: str = "tissue", context_size: int | None = None,
              thumb_size: int = 512, preview: bool = False, stain: str = "none") -> SlideView:
    """Open a slide and read its one thumbnail (see the module docstring). ``stain="reinhard"``
    fits the slide's stain normaliser on the thumbnail's tissue and applies it to the context
    and preview images (and, through the sensor, to every glimpse).

    Raises:
        SlideError: the slide cannot be opened or read.
    """
    from ..slide import open_source
    from ..slide.tissue import TissueMask, mask_from_rgb

    t0 = time.perf_counter()
    source = open_source(path)
    before = source.counters
    thumb = source.thumbnail(thumb_size)
    small = _at_most(thumb, MASK_SIZE)
    mask_arr, thr = mask_from_rgb(small)
    mask = TissueMask(mask_arr, source.dimensions, thr)
    norm = None
    if stain == "reinhard":
        from ..slide.stain import StainNormaliser

        norm = StainNormaliser.fit(small, mask_arr)
        thumb = norm.apply_u8(thumb)
    w, h = source.dimensions
    fr = SlideFrame.around(mask_arr, w, h) if frame == "tissue" else SlideFrame.whole(w, h)
    ctx = None
    if context_size:
        ctx = torch.from_numpy(_crop_resize(thumb, fr, int(context_size)))
    after = source.counters
    cost = {k: after[k] - before[k] for k in after}
    prev = torch.from_numpy(_crop_resize(thumb, fr, PREVIEW_SIZE)) if preview else None
    return SlideView(source, fr, mask, ctx, _target_of(source), cost,
                     time.perf_counter() - t0, prev, norm)


def resolve_units(units: str, mpps: list[float | None], base: float, fallback_mpp: float,
                  log=print) -> tuple[str, float]:
    """``(units, base)`` the sources are read with: ``um`` when asked, or when ``auto`` and
    every slide states its mpp; else ``px``, with an ``auto`` base in micrometres converted at
    ``fallback_mpp`` -- said in the log, as it changes what a glimpse covers."""
    if units != "auto":
        return units, base
    missing = sum(m is None for m in mpps)
    if not missing:
        log(f"retina in micrometres: every slide states its mpp (base {base:g} um)")
        return "um", base
    log(f"retina in level-0 pixels: {missing} of {len(mpps)} slides state no mpp; "
        f"base {base:g} um taken as {base / fallback_mpp:g} px at {fallback_mpp:g} um/px")
    return "px", base / fallback_mpp


class SlideSensor:
    """Reads each glimpse's patches lazily from the episodes' slides (frame -> slide
    coordinates per slide)."""

    def __init__(self, views: list[SlideView], slide_idx: np.ndarray, spec: RetinaSpec,
                 units: str):
        self.views = views
        self.slide_idx = np.asarray(slide_idx)
        self.spec = spec
        self.units = units
        self.groups = {int(s): np.nonzero(self.slide_idx == s)[0]
                       for s in np.unique(self.slide_idx)}
        self.seconds = 0.0  # spent reading glimpses (a scoring run's breakdown)

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        k, g = self.spec.scales, self.spec.patch
        out = torch.empty((loc.shape[0], k, 3, g, g), dtype=torch.float32)
        loc = loc.detach().cpu()
        t0 = time.perf_counter()
        for s, rows in self.groups.items():
            idx = torch.from_numpy(rows)
            view = self.views[s]
            x = view.source.glimpse(view.frame.to_slide(loc[idx]), self.spec, units=self.units)
            out[idx] = x if view.stain is None else view.stain.apply_patches(x)
        self.seconds += time.perf_counter() - t0
        return out.to(loc.dtype)

    def glimpse_labels(self, locations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` int64 (:meth:`SlideView.glimpse_labels`) of the episodes' raw
        ``locations`` ``(B, T, 2)`` (clamped as the sensor saw them)."""
        loc = locations.detach().cpu().clamp(-1.0, 1.0)
        b, t = loc.shape[:2]
        out = torch.empty((b, t), dtype=torch.long)
        for s, rows in self.groups.items():
            for r in rows.tolist():
                out[r] = self.views[s].glimpse_labels(loc[r], int(labels[r]))
        return out


class SlideSet:
    """The slides of one split, opened lazily (one :class:`SlideView` each, cached)."""

    def __init__(self, records: list[SlideRecord], class_names: list[str], spec: RetinaSpec,
                 units: str, *, frame: str = "tissue", context_size: int | None = None,
                 thumb_size: int = 512, start: str = "tissue", previews: bool = False,
                 stain: str = "none"):
        self.records = list(records)
        self.stain = stain
        self.class_names = list(class_names)
        self.spec = spec
        self.units = units
        self.frame = frame
        self.context_size = context_size
        self.thumb_size = int(thumb_size)
        self.start_rule = start
        self.previews = previews  # keep a preview per view (held-out sets: figures)
        self._views: dict[int, SlideView] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    def view(self, i: int) -> SlideView:
        v = self._views.get(i)
        if v is None:
            v = self._views[i] = open_view(
                self.records[i].path, frame=self.frame, context_size=self.context_size,
                thumb_size=self.thumb_size, preview=self.previews, stain=self.stain)
        return v
