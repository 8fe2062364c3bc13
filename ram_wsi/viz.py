"""Figures: training curves and the paper's Figure 3 (glimpse paths and what each glimpse saw).

Matplotlib with the Agg backend (no display needed); files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from .io_utils import atomic_path
from .models import RecurrentAttentionModel, RetinaSensor
from .retina import loc_to_pixels

__all__ = ["composite_glimpse", "plot_curves", "plot_glimpses", "plot_slide_glimpses"]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss/accuracy and validation errors per epoch."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if "train_classification" in history[0]:
        a.plot(ep, [h["train_classification"] for h in history], label="cross-entropy")
    a.plot(ep, [1 - h.get("train_accuracy", 0) for h in history], label="train error (stoch.)")
    a.set_xlabel("epoch")
    a.legend()
    a.set_title("training")
    for key, lab in (("val_error_stochastic", "stochastic (M=1)"), ("val_error_mean", "mean"),
                     ("val_error_m_avg", "M-averaged")):
        if key in history[0]:
            b.plot(ep, [h[key] for h in history], label=lab)
    b.set_xlabel("epoch")
    b.set_ylabel("validation error (%)")
    b.set_yscale("log")
    b.legend()
    b.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def plot_glimpses(model: RecurrentAttentionModel, images: torch.Tensor, labels: torch.Tensor,
                  path: str | Path, policy: str = "mean", centers: torch.Tensor | None = None,
                  target_size: float = 28.0) -> Path:
    """The paper's Figure 3: per row, the image with the glimpse path (each glimpse's fovea
    square, numbered; first green, last red; the widest scale dotted for the first glimpse;
    the true target box dashed cyan when ``centers`` is given), then one square per glimpse as
    :func:`composite_glimpse` builds it -- the full-resolution patch in the centre, each
    coarser scale upscaled back to its true extent around it (thin lines mark the scales'
    edges) -- which is what the network saw, at the place it saw it."""
    was = model.training
    model.eval()
    b = images.shape[0]
    sensor = RetinaSensor(images, model.spec)
    traj = model.unroll(sensor, b, policy=policy, keep_glimpses=True,
                        generator=torch.Generator(device=images.device).manual_seed(0))
    model.train(was)
    pred = traj.logits.argmax(-1).cpu()
    glimpses = traj.glimpses.cpu()  # (B, T, k, C, g, g)
    n_glimpses = glimpses.shape[1]
    h, w = images.shape[-2:]
    px = loc_to_pixels(traj.locations.clamp(-1, 1).cpu(), w, h)  # (B, T, 2)
    fig = plt.figure(figsize=(2.6 + 1.6 * n_glimpses, 2.6 * b))
    grid = fig.add_gridspec(b, 2 + n_glimpses, width_ratios=[2.0, 0.1] + [1.0] * n_glimpses)
    for i in range(b):
        ax = fig.add_subplot(grid[i, 0])
        target = None if centers is None else loc_to_pixels(centers[i].cpu(), w, h)
        _draw_path(ax, images[i].cpu(), px[i], model.spec, target, target_size)
        ax.set_title(f"label {int(labels[i])}, predicted {int(pred[i])}", fontsize=8)
        for t in range(n_glimpses):
            _draw_glimpse(fig.add_subplot(grid[i, 2 + t]), glimpses[i, t], model.spec, t)
    return _save(fig, path)


def _draw_path(ax, img: torch.Tensor, px: torch.Tensor, spec, target: torch.Tensor | None,
               target_size: float) -> None:
    """The image with its glimpse path: each glimpse's fovea square, numbered (first green,
    last red), the first glimpse's widest scale dotted, the true target box dashed cyan."""
    h, w = img.shape[-2:]
    n_glimpses = px.shape[0]
    cmap = plt.get_cmap("autumn_r")
    fovea, widest = spec.window(0), spec.window(spec.scales - 1)
    ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    if target is not None:
        ax.add_patch(Rectangle((target[0] - target_size / 2 - 0.5,
                                target[1] - target_size / 2 - 0.5), target_size, target_size,
                               fill=False, ec="cyan", lw=1, ls="--"))
    x0, y0 = px[0].tolist()
    ax.add_patch(Rectangle((x0 - widest / 2 - 0.5, y0 - widest / 2 - 0.5), widest, widest,
                           fill=False, ec="lime", lw=0.6, ls=":"))
    ax.plot(px[:, 0] - 0.5, px[:, 1] - 0.5, "-", color="yellow", lw=0.8)
    for t in range(n_glimpses):
        col = "lime" if t == 0 else cmap(t / max(1, n_glimpses - 1))
        x, y = px[t].tolist()
        ax.add_patch(Rectangle((x - fovea / 2 - 0.5, y - fovea / 2 - 0.5), fovea, fovea,
                               fill=False, ec=col, lw=1.0))
        ax.text(x - 0.5, y - 0.5, str(t + 1), color=col, fontsize=6, ha="center", va="center")
    ax.set_xlim(-0.5 - fovea / 2, w - 0.5 + fovea / 2)
    ax.set_ylim(h - 0.5 + fovea / 2, -0.5 - fovea / 2)
    ax.axis("off")


def _draw_glimpse(ax, glimpse: torch.Tensor, spec, t: int, side: int = 192) -> None:
    """Glimpse ``t`` as :func:`composite_glimpse` builds it, the finer scales' edges marked."""
    widest = spec.window(spec.scales - 1)
    sq = composite_glimpse(glimpse, spec.scale_factor, side)
    ax.imshow(sq[0] if sq.shape[0] == 1 else sq.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    for j in range(spec.scales - 1):  # the edges of the finer scales, inside the coarsest
        e = side * spec.window(j) / widest
        ax.add_patch(Rectangle(((side - e) / 2 - 0.5, (side - e) / 2 - 0.5), e, e,
                               fill=False, ec="tab:orange", lw=0.5))
    ax.set_title(f"glimpse {t + 1}", fontsize=7)
    ax.axis("off")


def composite_glimpse(glimpse: torch.Tensor, factor: float, size: int = 192) -> torch.Tensor:
    """One glimpse ``(k, C, g, g)`` as the paper's Figure 3 shows it: a ``(C, size, size)``
    square where each scale is upscaled back to its true extent around the same centre, the
    coarsest underneath and the full-resolution patch in the middle."""
    k, c = glimpse.shape[:2]
    out = torch.empty(c, size, size)
    widest = factor ** (k - 1)
    for j in range(k - 1, -1, -1):
        side = max(1, round(size * factor**j / widest))
        up = torch.nn.functional.interpolate(glimpse[j][None].float(), size=(side, side),
                                             mode="nearest")[0]
        a = (size - side) // 2
        out[:, a:a + side, a:a + side] = up
    return out


def plot_slide_glimpses(rows: Sequence[dict[str, Any]], spec, class_names: Sequence[str],
                        path: str | Path) -> Path:
    """Per slide: its frame (the tissue's bounding square) with the mean-policy path, the
    fovea of each glimpse (first green, last red) and the widest scale of the first, then
    each glimpse's two finest scales as :func:`composite_glimpse` shows them (the fovea in the
    middle, at full resolution); the decision in the title.
    ``rows`` are :func:`ram_wsi.train.slide_eval.rollout_slides` rows with glimpses kept."""
    n = len(rows)
    n_glimpses = rows[0]["glimpses"].shape[0]
    fig = plt.figure(figsize=(3.2 + 1.6 * n_glimpses, 3.0 * n))
    grid = fig.add_gridspec(n, 1 + n_glimpses, width_ratios=[2.0] + [1.0] * n_glimpses)
    cmap = plt.get_cmap("autumn_r")
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[i, 0])
        prev = np.asarray(r["preview"]).transpose(1, 2, 0)
        size = prev.shape[0]
        ax.imshow(prev)
        fr = r["frame"]
        scale = size / fr["w"]  # preview px per level-0 px
        pts = (torch.tensor(np.asarray(r["path_frame"])) + 1) * 0.5 * size - 0.5
        ax.plot(pts[:, 0], pts[:, 1], "-", color="yellow", lw=0.8)
        fovea, widest = r["windows_px"][0] * scale, r["windows_px"][-1] * scale
        x0, y0 = pts[0].tolist()
        ax.add_patch(Rectangle((x0 - widest / 2, y0 - widest / 2), widest, widest, fill=False,
                               ec="lime", lw=0.6, ls=":"))
        for t in range(n_glimpses):
            col = "lime" if t == 0 else cmap(t / max(1, n_glimpses - 1))
            x, y = pts[t].tolist()
            box = max(fovea, 2.0)
            ax.add_patch(Rectangle((x - box / 2, y - box / 2), box, box, fill=False, ec=col,
                                   lw=1.0))
            ax.text(x, y, str(t + 1), color=col, fontsize=6, ha="center", va="center")
        pm = r["probs_mean"]
        ax.set_title(f"{Path(str(r['path'])).name[:40]}\nlabel {class_names[r['label']]}, "
                     f"predicted {class_names[int(pm.argmax())]} ({pm.max():.2f})", fontsize=7)
        ax.axis("off")
        g = torch.tensor(np.asarray(r["glimpses"])).float() / 255.0  # (T, k, C, g, g)
        # The two finest scales: on a slide the coarser ones would shrink the fovea to a dot.
        shown = min(2, g.shape[1])
        for t in range(n_glimpses):
            ax = fig.add_subplot(grid[i, 1 + t])
            ax.imshow(composite_glimpse(g[t, :shown], spec.scale_factor).permute(1, 2, 0)
                      .numpy(), interpolation="nearest")
            ax.set_title(f"glimpse {t + 1} ({r['windows_px'][shown - 1]:.0f} px)", fontsize=7)
            ax.axis("off")
    return _save(fig, path)
