"""The two conventional baselines of the needle benchmark: a thumbnail CNN and dense tiling.

* :class:`ThumbnailCNN` sees the whole slide at low resolution (one thumbnail). It is the
  cheap lower bound: it shows that the lesion's class cannot be read at that resolution.
* Dense tiling (:func:`tissue_tiles`, :class:`TileCNN`, :func:`score_dense`) is how
  conventional pipelines (CLAM, CAMELYON16 entries) classify a slide: every tissue tile at a
  level where the class is readable goes through a small CNN and the tile scores are pooled
  (max) into a slide decision. Its cost grows with the tissue area, which is what the glimpse
  agent is compared against; :func:`score_dense` reports it from the source's read counters.

Shapes follow torchvision.ops: images ``(B, 3, S, S)`` float in ``[0, 1]``, tiles
``(N, 3, t, t)`` (uint8 or float in ``[0, 1]``), tile corners ``(N, 2)`` ``(x, y)`` in pixels
of the level they were cut from. Everything runs on the CPU; randomness comes from explicit
``torch.Generator`` / ``numpy.random.Generator`` objects made from ``seed`` (the global RNGs are
neither used nor advanced); ``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..slide.base import COUNTERS, GlimpseSource
from ..slide.tissue import TissueMask, mask_from_rgb, tissue_mask

__all__ = ["ThumbnailCNN", "TileCNN", "measure_cold", "predict_thumbnails", "score_dense",
           "slide_thumbnails", "tile_training_set", "tissue_tiles", "train_thumbnail_cnn",
           "train_tile_cnn"]

T = TypeVar("T")
MIN_LESION_OVERLAP = 0.3
"""A tile is a lesion tile when its box overlaps the lesion's box by at least this fraction of
the tile's area."""


# ---------------------------------------------------------------------------- networks
def _as_images(x: Any) -> torch.Tensor:
    """``(B, 3, H, W)`` float32 in ``[0, 1]`` from a uint8 or float tensor / array of that shape
    (uint8 is divided by 255; floats are taken as they are)."""
    t = torch.as_tensor(x)
    if t.dtype == torch.uint8:
        return t.to(torch.float32).mul_(1.0 / 255.0)
    return t.to(torch.float32)


class _SmallCNN(nn.Module):
    """``blocks`` x (3x3 conv + ReLU + 2x2 max-pool), global average pooling, linear.

    The input is inverted (``1 - x``) so that white -- glass, and what ``read_regions`` fills
    outside the slide -- is 0, the value of the convolutions' zero padding: a tile cut at the
    slide's border looks like one surrounded by glass. Global average pooling makes the net
    take any input size of at least ``2 ** blocks`` pixels.
    """

    def __init__(self, outputs: int, widths: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = 1.0 - _as_images(images)
        x = self.features(x).mean((2, 3))
        return self.head(x)


def _init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``model`` from ``generator`` (PyTorch's default scheme for conv/linear:
    kaiming-uniform weights with ``a = sqrt(5)``, uniform biases) so that no global RNG is
    involved."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                m.bias.uniform_(-bound, bound, generator=generator)
    return model


def _build(cls, *args, seed: int = 0) -> nn.Module:
    # Constructors draw their default init from the global RNG: build inside a fork (the global
    # state is restored afterwards) and re-initialise from our own generator.
    with torch.random.fork_rng(devices=[]):
        model = cls(*args)
    return _init_(model, torch.Generator().manual_seed(int(seed)))


class ThumbnailCNN(_SmallCNN):
    """Slide classifier from one thumbnail.

    Input ``(B, 3, S, S)`` float in ``[0, 1]`` (uint8 accepted), ``S >= 32``; output
    ``(B, classes)`` logits. Five blocks of 16-16-32-32-64 filters (~33k parameters): enough
    to see tissue layout and colour, which is all a thumbnail holds -- the lesion's class is not
    readable at that resolution, which is the point of this baseline.
    """

    def __init__(self, classes: int, widths: Sequence[int] = (16, 16, 32, 32, 64)):
        super().__init__(classes, widths)
        self.classes = classes


class TileCNN(_SmallCNN):
    """Tile classifier of dense tiling.

    Input ``(N, 3, t, t)`` float in ``[0, 1]`` (uint8 accepted), ``t >= 16``; output
    ``(N, classes + 1)`` logits: class 0 is background (tissue without lesion), class ``c + 1``
    a lesion of slide class ``c``. Four blocks of 16-32-32-64 filters (~33k parameters): a small
    net, since at the chosen level the lesion's class is readable in one tile.
    """

    def __init__(self, classes: int, widths: Sequence[int] = (16, 32, 32, 64)):
        super().__init__(classes + 1, widths)
        self.classes = classes


# ---------------------------------------------------------------------------- training
def _dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations of ``(N, C, H, W)`` (``op`` in ``0..7``)."""
    if op & 4:
        x = x.flip(-1)
    return torch.rot90(x, op & 3, (-2, -1)) if op & 3 else x


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random dihedral transform per sample: slides have no orientation.

    A non-square batch ``(N, C, H, W)`` cannot turn a quarter per sample (the shapes would
    differ): each sample gets one of the four transforms that keep its shape (flips, half
    turn) and the whole batch is transposed or not, which still gives every sample each of
    the 8 with probability 1/8."""
    if x.shape[-1] != x.shape[-2]:
        return _augment_oblong(x, g)
    ops = torch.randint(8, (x.shape[0],), generator=g)
    out = x.clone()
    for op in range(1, 8):
        idx = (ops == op).nonzero().view(-1)
        if idx.numel():
            out[idx] = _dihedral(x[idx], op)
    return out


def _augment_oblong(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    ops = torch.randint(4, (x.shape[0],), generator=g)  # bit 0: flip W, bit 1: flip H
    out = x.clone()
    for op, dims in ((1, (-1,)), (2, (-2,)), (3, (-2, -1))):
        idx = (ops == op).nonzero().view(-1)
        if idx.numel():
            out[idx] = x[idx].flip(dims)
    return out.transpose(-2, -1) if int(torch.randint(2, (1,), generator=g)) else out


def _fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
         batch_size: int, lr: float, g: torch.Generator, augment: bool) -> nn.Module:
    """Adam on cross-entropy, reshuffled every epoch from ``g``; ``images`` stay in their dtype
    (uint8 tiles are converted per batch, so a large set costs 1 byte a pixel)."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("no training samples")
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = _as_images(images[idx])
            if augment:
                x = _augment(x, g)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def train_thumbnail_cnn(images: Any, labels: Any, *, classes: int, epochs: int,
                        batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                        augment: bool = True,
                        widths: Sequence[int] | None = None) -> ThumbnailCNN:
    """Train a :class:`ThumbnailCNN` on ``images`` ``(B, 3, S, S)`` (float in ``[0, 1]`` or
    uint8; ``(B, 3, H, W)`` works too: a whole field) and ``labels`` ``(B,)`` in
    ``[0, classes)``; ``widths``: its blocks' filters (default the class's).

    Augmentation: a random flip/90-degree rotation per sample and batch (``augment``).
    Initialisation, shuffling and augmentation all come from ``seed``: the same seed (and thread
    count) gives the same model. Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(int(seed))
    model = (_build(ThumbnailCNN, classes, seed=seed) if widths is None
             else _build(ThumbnailCNN, classes, tuple(widths), seed=seed))
    x = torch.as_tensor(images)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return _fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, g=g, augment=augment)


@torch.no_grad()
def predict_thumbnails(model: ThumbnailCNN, images: Any, batch: int = 64) -> np.ndarray:
    """Class probabilities ``(B, classes)`` (softmax) of ``images`` ``(B, 3, S, S)``."""
    model.eval()
    x = torch.as_tensor(images)
    out = [F.softmax(model(_as_images(x[i:i + batch])), -1) for i in range(0, x.shape[0], batch)]
    if not out:
        return np.zeros((0, model.classes), np.float32)
    return torch.cat(out).numpy()


def slide_thumbnails(sources: Sequence[GlimpseSource], size: int = 256) -> np.ndarray:
    """``(B, 3, size, size)`` uint8 thumbnails (:meth:`GlimpseSource.thumbnail`, longest side
    ``size``; a non-square slide is centred on white), the input of :class:`ThumbnailCNN`."""
    out = np.full((len(sources), 3, size, size), 255, np.uint8)
    for i, src in enumerate(sources):
        th = src.thumbnail(size).transpose(2, 0, 1)
        h, w = th.shape[1:]
        y0, x0 = (size - h) // 2, (size - w) // 2
        out[i, :, y0:y0 + h, x0:x0 + w] = th
    return out


def train_tile_cnn(tiles: Any, tile_labels: Any, *, classes: int, epochs: int,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                   augment: bool = True) -> TileCNN:
    """Train a :class:`TileCNN` on ``tiles`` ``(N, 3, t, t)`` (uint8, as
    :func:`tile_training_set` returns them, or float) and ``tile_labels`` ``(N,)`` in
    ``[0, classes]`` (0: background). Seeded and augmented as :func:`train_thumbnail_cnn`.
    Returns the model in eval mode."""
    g = torch.Generator().manual_seed(int(seed))
    model = _build(TileCNN, classes, seed=seed)
    x = torch.as_tensor(tiles)
    y = torch.as_tensor(tile_labels, dtype=torch.int64)
    return _fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, g=g, augment=augment)


# ---------------------------------------------------------------------------- tiling
def _tile_grid(source: GlimpseSource, level: int, tile: int) -> tuple[int, int]:
    """``(nx, ny)``: tiles of ``tile`` level pixels covering the level (the last row and column
    may stick out of the level; ``read_regions`` fills the outside with white)."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= level < source.level_count:
        raise ValueError(f"level {level} out of range (the slide has {source.level_count})")
    lw, lh = source.level_dimensions[level]
    return -(-lw // tile), -(-lh // tile)


def _interp_cols(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``table`` ``(R, n + 1)`` evaluated at fractional columns ``u`` (``(K,)`` in ``[0, n]``) by
    linear interpolation: ``(R, K)``."""
    n = table.shape[1] - 1
    i0 = np.clip(np.floor(u).astype(np.int64), 0, max(n - 1, 0))
    f = u - i0
    return table[:, i0] * (1.0 - f) + table[:, np.minimum(i0 + 1, n)] * f


def _tissue_fractions(source: GlimpseSource, level: int, tile: int,
                      mask: np.ndarray) -> np.ndarray:
    """``(ny, nx)`` fraction of each grid tile's area that ``mask`` (``(h, w)`` over the whole
    slide) calls tissue, area-weighted.

    The integral of a piecewise-constant mask is bilinear inside each mask pixel, so linear
    interpolation of the integral image at the tile edges (level-0 edges mapped into mask
    pixels) is exact, whatever the ratio of tile to mask pixel. Tile parts outside the slide
    count as glass. O(h * w + nx * ny) memory.
    """
    nx, ny = _tile_grid(source, level, tile)
    h, w = mask.shape
    w0, h0 = source.dimensions
    dx, dy = source.axis_downsamples[level]
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    # Tile edges: level px -> level-0 px -> mask px, clamped to the slide.
    ux = np.clip(np.arange(nx + 1) * tile * dx * (w / w0), 0, w)
    uy = np.clip(np.arange(ny + 1) * tile * dy * (h / h0), 0, h)
    at = _interp_cols(_interp_cols(integral, ux).T, uy).T  # (ny + 1, nx + 1)
    sums = at[1:, 1:] - at[:-1, 1:] - at[1:, :-1] + at[:-1, :-1]
    area = (tile * dx * w / w0) * (tile * dy * h / h0)
    return sums / area


def _mask_array(source: GlimpseSource, mask: TissueMask | np.ndarray | None,
                mask_size: int) -> np.ndarray:
    if mask is None:
        mask = tissue_mask(source, mask_size)
    return np.asarray(mask.mask if isinstance(mask, TissueMask) else mask, dtype=bool)


def tissue_tiles(source: GlimpseSource, level: int, tile: int, *,
                 mask: TissueMask | np.ndarray | None = None, min_tissue: float = 0.25,
                 mask_size: int = 2048) -> np.ndarray:
    """Top-left corners ``(N, 2)`` int64 ``(x, y)``, in pixels of ``level``, of the tiles on
    tissue.

    Tiles form the non-overlapping grid of ``tile`` level pixels from the level's origin,
    covering it (the last row/column may reach past the level's edge and is then read padded
    with white). A tile is kept when at least ``min_tissue`` of its area is tissue according to
    ``mask`` (a :class:`TissueMask` or a boolean ``(h, w)`` array over the whole slide; default
    ``tissue_mask(source, mask_size)``), mask pixels mapped onto the grid by area. Corners are
    in row-major order (``y``, then ``x``), so consecutive tiles share decoded blocks.
    """
    frac = _tissue_fractions(source, level, tile, _mask_array(source, mask, mask_size))
    ty, tx = np.nonzero(frac >= min_tissue - 1e-9)
    return np.stack([tx, ty], 1).astype(np.int64) * tile


def _overlaps(source: GlimpseSource, level: int, tile: int, corners: np.ndarray,
              target: Mapping[str, Any]) -> np.ndarray:
    """``(N,)`` area of each tile's box (level-0) on the lesion, as a fraction of the tile's
    area: the region's cells when the target lists them (a tissue mosaic: ``region_cells`` of
    ``cell_px``), else the lesion's box (``target_center_px +- target_size_px / 2``); zeros for
    a slide without a lesion."""
    dx, dy = source.axis_downsamples[level]
    x0 = corners[:, 0] * dx
    y0 = corners[:, 1] * dy
    w, h = tile * dx, tile * dy
    if target.get("region_cells"):
        return _cell_overlaps(target, x0, y0, w, h)
    if target.get("target_center_px") is None:
        return np.zeros(len(corners))
    cx, cy = (float(v) for v in target["target_center_px"])
    size = target["target_size_px"]
    sx, sy = (float(size), float(size)) if np.isscalar(size) else (float(v) for v in size)
    ix = np.clip(np.minimum(x0 + w, cx + sx / 2) - np.maximum(x0, cx - sx / 2), 0, None)
    iy = np.clip(np.minimum(y0 + h, cy + sy / 2) - np.maximum(y0, cy - sy / 2), 0, None)
    return ix * iy / (w * h)


def _cell_overlaps(target: Mapping[str, Any], x0: np.ndarray, y0: np.ndarray, w: float,
                   h: float) -> np.ndarray:
    """Area of each box ``[x0, x0 + w) x [y0, y0 + h)`` covered by the region's cells (squares
    of ``cell_px``), over the box's area: per axis, the overlap of the box with each cell
    column / row, summed over the region's cells."""
    cell = float(target["cell_px"])
    cells = np.asarray(target["region_cells"], dtype=np.float64)  # (K, 2) (cx, cy)
    ox = np.clip(np.minimum(x0[:, None] + w, (cells[None, :, 0] + 1) * cell)
                 - np.maximum(x0[:, None], cells[None, :, 0] * cell), 0, None)
    oy = np.clip(np.minimum(y0[:, None] + h, (cells[None, :, 1] + 1) * cell)
                 - np.maximum(y0[:, None], cells[None, :, 1] * cell), 0, None)
    return (ox * oy).sum(1) / (w * h)


def tile_training_set(sources: Sequence[GlimpseSource], labels: Sequence[int],
                      targets: Sequence[Mapping[str, Any]], *, level: int, tile: int,
                      per_slide_background: int = 32, seed: int = 0, min_tissue: float = 0.25,
                      mask_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Labelled tiles for :func:`train_tile_cnn`: ``(tiles (N, 3, tile, tile) uint8,
    tile_labels (N,) int64)``.

    Per slide ``i`` (``targets[i]``: a dict with ``target_center_px`` and ``target_size_px``,
    level-0 pixels, as the synthetic slides' sidecar holds them):

    * lesion tiles -- the tissue tiles (:func:`tissue_tiles`) whose box overlaps the lesion
      (its cells, or its box: :func:`_overlaps`) by at least :data:`MIN_LESION_OVERLAP` of the
      tile's area -- get ``labels[i] + 1`` (a tissue mosaic: 1 adenoma, 2 carcinoma).
      When none does (a lesion smaller than the tile, or straddling four tiles) the tile of
      largest overlap, on tissue or not, is taken, so every slide contributes its lesion; a
      slide without a lesion (a benign mosaic without adenoma) contributes background only;
    * up to ``per_slide_background`` tissue tiles that do not touch the lesion box at all get
      ``0``, sampled without replacement from ``seed`` (tiles with a partial overlap below the
      threshold are ambiguous and left out of both).
    """
    if not len(sources) == len(labels) == len(targets):
        raise ValueError("sources, labels and targets must have the same length")
    rng = np.random.default_rng(int(seed))
    tiles, tile_labels = [], []
    for src, lab, tgt in zip(sources, labels, targets):
        corners = tissue_tiles(src, level, tile, min_tissue=min_tissue, mask_size=mask_size)
        ov = _overlaps(src, level, tile, corners, tgt)
        lesion = corners[ov >= MIN_LESION_OVERLAP]
        if lesion.shape[0] == 0 and tgt.get("target_center_px") is not None:
            nx, ny = _tile_grid(src, level, tile)
            grid = np.stack(np.meshgrid(np.arange(nx), np.arange(ny)), -1).reshape(-1, 2) * tile
            lesion = grid[[int(np.argmax(_overlaps(src, level, tile, grid, tgt)))]]
        bg = corners[ov <= 0.0]
        if bg.shape[0] > per_slide_background:
            bg = bg[np.sort(rng.choice(bg.shape[0], per_slide_background, replace=False))]
        picked = np.concatenate([lesion, bg])
        tiles.append(src.read_regions(level, picked[:, 0], picked[:, 1], tile, tile))
        tile_labels.append(np.r_[np.full(len(lesion), int(lab) + 1), np.zeros(len(bg))])
    return np.concatenate(tiles), np.concatenate(tile_labels).astype(np.int64)


# ---------------------------------------------------------------------------- scoring
def measure_cold(fn: Callable[[], T], source: GlimpseSource) -> tuple[T, dict[str, int], float]:
    """``fn()`` (which reads ``source``) on cold caches: its result, what ``source`` read
    (its counters) and the seconds it took. Every cost row of the needle and score benchmarks
    is measured so, so that their pixels and seconds compare."""
    from ..slide import clear_caches

    clear_caches()
    source.reset_counters()
    t0 = time.perf_counter()
    out = fn()
    return out, source.counters, time.perf_counter() - t0


def _pool(s: np.ndarray, pooling: str) -> np.ndarray:
    """Slide probabilities from the per-class maxima ``s`` of tile probabilities
    (:func:`score_dense`)."""
    classes = len(s)
    if pooling == "positive":
        rest = s[:-1]
        share = (rest / rest.sum() if rest.sum() > 0
                 else np.full(classes - 1, 1.0 / (classes - 1)))
        return np.r_[(1.0 - s[-1]) * share, s[-1]]
    if pooling != "ratio":
        raise ValueError(f"pooling must be 'ratio' or 'positive', got {pooling!r}")
    total = float(s.sum())
    return s / total if total > 0 else np.full(classes, 1.0 / classes)


@torch.no_grad()
def score_dense(source: GlimpseSource, model: TileCNN, *, level: int, tile: int,
                batch: int = 256, min_tissue: float = 0.25, mask_size: int = 2048,
                use_cache: bool = True, pooling: str = "ratio") -> dict[str, Any]:
    """Classify a slide the conventional way: every tissue tile of ``level``, max-pooled.

    The tissue mask is computed here from a fresh thumbnail (``mask_from_rgb`` of
    ``source.thumbnail(mask_size)``, bypassing :func:`tissue_mask`'s memo) so that its read is
    always part of the measured cost. Tiles (:func:`tissue_tiles`) are read in block-major
    order (those of one decoded block of the level together), ``batch`` at a time with
    ``source.read_regions``, and classified; memory is one batch of tiles and activations
    (``batch * 3 * tile**2`` bytes of pixels, ~20x that in float activations), whatever the
    slide's size. For each class ``c`` the slide score is
    ``s_c = max over tiles of p(tile = c + 1)``; with ``pooling="ratio"`` (every slide has a
    lesion: which class is it) ``probs = s / s.sum()`` (uniform when all are zero or there is
    no tissue tile); with ``pooling="positive"`` (a finding of the last class, carcinoma,
    anywhere makes the slide positive, as CLAM's and CAMELYON16's max-pooled tile scores do)
    ``p(last class) = s_last`` and the other classes share ``1 - s_last`` in proportion to
    their ``s_c``.

    How decoded pixels are counted is the backend's (see :data:`~ram_wsi.slide.base.COUNTERS`):
    OpenSlide counts the file tiles each ``read_regions`` call touches (a cold read per call:
    a block split by a batch boundary counts twice); block-cache backends count the blocks they
    really decode, so blocks left in the process cache by an earlier read of the same slide
    cost nothing -- measure cold costs on a slide not read before, or pass
    ``use_cache=False``.

    Returns:
        ``probs`` ``(classes,)`` float64, ``predicted`` (argmax), ``tiles`` (N read),
        ``top_tile`` (corner ``(x, y)`` of the tile with the highest lesion probability, or
        None), ``seconds`` (wall time of the whole call), and ``pixels_decoded``,
        ``pixels_requested``, ``bytes_read``, ``blocks_decoded``, ``regions``: the change of
        ``source.counters`` over the whole call, thumbnail included.
    """
    t0 = time.perf_counter()
    before = source.counters
    model.eval()
    classes = model.classes
    mask, _ = mask_from_rgb(source.thumbnail(mask_size))
    corners = tissue_tiles(source, level, tile, mask=mask, min_tissue=min_tissue)
    # Block-major order: the tiles of one decoded block are consecutive, so a block is decoded
    # once (at most twice, split by a batch boundary), not once per tile row it holds.
    bw, bh = source.info.block_sizes[level]
    x, y = corners[:, 0], corners[:, 1]
    corners = corners[np.lexsort((x, y, x // bw, y // bh))]
    best = torch.zeros(classes + 1, dtype=torch.float64)
    top_tile = None
    top = -1.0
    for i in range(0, corners.shape[0], batch):
        c = corners[i:i + batch]
        regions = source.read_regions(level, c[:, 0], c[:, 1], tile, tile, use_cache=use_cache)
        p = F.softmax(model(torch.from_numpy(regions)), -1).to(torch.float64)
        best = torch.maximum(best, p.max(0).values)
        lesion = 1.0 - p[:, 0]
        j = int(lesion.argmax())
        if float(lesion[j]) > top:
            top, top_tile = float(lesion[j]), [int(v) for v in c[j]]
        del regions, p
    probs = _pool(best[1:].numpy(), pooling)
    after = source.counters
    out: dict[str, Any] = {"probs": probs, "predicted": int(np.argmax(probs)),
                           "tiles": int(corners.shape[0]), "top_tile": top_tile,
                           "seconds": time.perf_counter() - t0}
    out.update({k: after[k] - before[k] for k in COUNTERS})
    return out
