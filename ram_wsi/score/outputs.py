"""Per-slide outputs people open: QuPath GeoJSON and an annotated thumbnail.

The GeoJSON follows what QuPath's importer reads (``PathIO``): a ``FeatureCollection`` whose
features carry a UUID string ``id`` and, inside ``properties`` (where QuPath looks; TIAToolbox
puts ``objectType`` outside and QuPath ignores it, WSInfer's differs too -- wsinfer#178):
``objectType`` (``annotation`` for the glimpse path, a LineString; ``detection`` for each
glimpse's box per scale, a Polygon), ``classification`` ``{name, color: [r, g, b]}`` for the
predicted class, and ``measurements`` as a ``{name: value}`` map. Coordinates are level-0
pixels, ``(x, y)`` with ``(0, 0)`` the top-left corner; boxes are clipped to the slide. IDs are
UUID5s of the slide's path and the feature, so scoring a slide again writes the same file.
"""

from __future__ import annotations

import colorsys
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_path

__all__ = ["annotated_thumbnail", "class_colors", "slide_geojson", "write_geojson", "write_png"]

_NS = uuid.UUID("6f0c5bde-6f1e-4d0e-9a53-1b1f8b0c2a77")  # ram_wsi's namespace for feature ids


def class_colors(class_names: Sequence[str]) -> dict[str, list[int]]:
    """A fixed, distinct ``[r, g, b]`` per class (evenly spaced hues, in class order)."""
    n = max(1, len(class_names))
    return {name: [round(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.75, 0.9)]
            for i, name in enumerate(class_names)}


def _box(cx: float, cy: float, side: float, w: int, h: int) -> list[list[float]] | None:
    x0, x1 = max(0.0, cx - side / 2), min(float(w), cx + side / 2)
    y0, y1 = max(0.0, cy - side / 2), min(float(h), cy + side / 2)
    if x1 <= x0 or y1 <= y0:
        return None
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _decision(row: dict[str, Any], probs: Sequence[float] | None) -> np.ndarray:
    """The probabilities a row's decision is read from: ``probs`` when given (a scoring run's
    M-averaged ones), else the mean policy's."""
    return np.asarray(row["probs_mean"] if probs is None else probs, dtype=np.float64)


def slide_geojson(row: dict[str, Any], class_names: Sequence[str],
                  probs: Sequence[float] | None = None) -> dict[str, Any]:
    """The QuPath FeatureCollection of one :func:`~ram_wsi.train.slide_eval.rollout_slides`
    row (the mean-policy path): one path annotation, one detection per glimpse and scale,
    classified by ``probs`` (default the mean policy's)."""
    names = list(class_names)
    colors = class_colors(names)
    probs = _decision(row, probs)
    pred = names[int(probs.argmax())]
    cls = {"name": pred, "color": colors[pred]}
    w, h = (int(v) for v in row["dimensions"])
    path = np.asarray(row["path_px"], dtype=np.float64)
    key = str(row["path"])

    def fid(*parts: Any) -> str:
        return str(uuid.uuid5(_NS, "|".join([key, *map(str, parts)])))

    probs_m = {f"prob_{c}": float(p) for c, p in zip(names, probs)}
    features = [{
        "type": "Feature", "id": fid("path"),
        "geometry": {"type": "LineString",
                     "coordinates": [[float(x), float(y)] for x, y in path]},
        "properties": {"objectType": "annotation", "name": "glimpse path",
                       "classification": cls,
                       "measurements": {**probs_m, "glimpses": float(len(path))}},
    }]
    for t, (cx, cy) in enumerate(path):
        for j, side in enumerate(row["windows_px"]):
            ring = _box(float(cx), float(cy), float(side), w, h)
            if ring is None:
                continue
            features.append({
                "type": "Feature", "id": fid("glimpse", t, j),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "detection", "name": f"glimpse {t + 1} scale {j}",
                               "classification": cls,
                               "measurements": {"step": float(t + 1), "scale": float(j),
                                                "window_px": float(side), **probs_m}},
            })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> Path:
    """``collection`` as JSON at ``path``, atomically (temp file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(collection))
    return path


def annotated_thumbnail(row: dict[str, Any], class_names: Sequence[str], size: int = 512,
                        probs: Sequence[float] | None = None):
    """The slide's frame (``row["preview"]``) with the path, each glimpse's fovea box (first
    green, last red), the widest box of the first glimpse, and the decision (``probs``,
    default the mean policy's) written on it: a PIL image of ``size`` px."""
    from PIL import Image, ImageDraw

    names = list(class_names)
    prev = np.asarray(row["preview"]).transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(prev)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    fr = row["frame"]
    scale = size / float(fr["w"])
    pts = [((x - fr["x0"]) * scale, (y - fr["y0"]) * scale) for x, y in row["path_px"]]
    draw.line(pts, fill=(255, 220, 0), width=2)
    n = len(pts)
    for t, (x, y) in enumerate(pts):
        f = t / max(1, n - 1)
        col = (0, 200, 0) if t == 0 else (255, round(160 * (1 - f)), 0)
        half = max(2.0, row["windows_px"][0] * scale / 2)
        draw.rectangle([x - half, y - half, x + half, y + half], outline=col, width=2)
        draw.text((x + half + 2, y - half), str(t + 1), fill=col)
    x, y = pts[0]
    half = row["windows_px"][-1] * scale / 2
    draw.rectangle([x - half, y - half, x + half, y + half], outline=(0, 200, 0), width=1)
    probs = _decision(row, probs)
    k = int(probs.argmax())
    text = f"{names[k]}  p={probs[k]:.2f}"
    draw.rectangle([4, 4, 12 + 7 * len(text), 20], fill=(255, 255, 255))
    draw.text((8, 6), text, fill=(0, 0, 0))
    return img


def write_png(path: str | Path, image) -> Path:
    """A PIL image as PNG at ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
