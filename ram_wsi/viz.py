"""Figures: training curves and the paper's Figure 3 (glimpse paths and what each glimpse saw).

Matplotlib with the Agg backend (no display needed); files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .io_utils import atomic_path  # noqa: E402
from .models import RecurrentAttentionModel, RetinaSensor  # noqa: E402
from .retina import loc_to_pixels  # noqa: E402

__all__ = ["plot_curves", "plot_glimpses"]


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
    a.plot(ep, [1 - h.get("train_reward", 0) for h in history], label="train error (stoch.)")
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
                  path: str | Path, policy: str = "mean") -> Path:
    """Like the paper's Figure 3: each row is an image with its glimpse path (first glimpse
    green, last red; every scale's square drawn), then each glimpse's scales upscaled side by
    side."""
    was = model.training
    model.eval()
    b = images.shape[0]
    sensor = RetinaSensor(images, model.spec)
    traj = model.unroll(sensor, b, policy=policy, keep_glimpses=True,
                        generator=torch.Generator(device=images.device).manual_seed(0))
    model.train(was)
    pred = traj.logits.argmax(-1).cpu()
    glimpses = traj.glimpses.cpu()  # (B, T, k, C, g, g)
    steps, k = glimpses.shape[1], glimpses.shape[2]
    h, w = images.shape[-2:]
    px = loc_to_pixels(traj.locations.clamp(-1, 1).cpu(), w, h)  # (B, T, 2)
    fig, axes = plt.subplots(b, 1 + steps, figsize=(1.6 * (1 + steps), 1.7 * b), squeeze=False)
    cmap = plt.get_cmap("autumn_r")
    for i in range(b):
        ax = axes[i, 0]
        ax.imshow(images[i, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        ax.plot(px[i, :, 0] - 0.5, px[i, :, 1] - 0.5, "-", color="yellow", lw=1)
        for t in range(steps):
            col = "lime" if t == 0 else cmap(t / max(1, steps - 1))
            for j in range(k):
                s = model.spec.window(j)
                ax.add_patch(Rectangle((px[i, t, 0] - s / 2 - 0.5, px[i, t, 1] - s / 2 - 0.5),
                                       s, s, fill=False, ec=col, lw=0.6))
        ax.set_title(f"label {int(labels[i])} pred {int(pred[i])}", fontsize=7)
        ax.axis("off")
        for t in range(steps):
            ax = axes[i, 1 + t]
            # Scales side by side, each upscaled to the same size (nearest): what the net saw.
            strip = torch.cat([glimpses[i, t, j, 0] for j in range(k)], dim=1)
            ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"t={t + 1}", fontsize=7)
            ax.axis("off")
    return _save(fig, path)
