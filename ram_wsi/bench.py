"""Benchmarks: training throughput (ours vs a per-sample crop loop) and the paper's MNIST table.

Each prints JSON lines (one per measurement) and a short table; speed is always compared with the
naive way in the same run, because these machines are noisy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from .config import ExperimentConfig, load_config
from .models import RecurrentAttentionModel, RetinaSensor
from .retina import RetinaSpec, loc_to_pixels
from .train.losses import hybrid_loss
from .train.trainer import Trainer, build_optimizer, resolve_device

__all__ = ["PAPER_NIPS", "measure_throughput", "mnist_table", "naive_glimpse", "print_table"]

# The NIPS version of the paper's table (test error, %), for the rows we reproduce.
PAPER_NIPS: dict[str, dict[str, float]] = {
    "mnist28": {"ram": 1.07},
    "translated60": {"ram": 1.20},
    "cluttered60": {"ram": 4.04, "ram_random": 14.4, "conv": 8.09},
    "cluttered100": {"ram": 8.11, "conv": 14.35},
}


def naive_glimpse(images: torch.Tensor, loc: torch.Tensor, spec: RetinaSpec) -> torch.Tensor:
    """The common public approach, kept only as the benchmark's reference: a Python loop over
    the batch and scales, integer crops around a rounded centre, ``F.interpolate(area)``."""
    b, c, h, w = images.shape
    px = loc_to_pixels(loc, w, h).round().long()
    out = torch.zeros(b, spec.scales, c, spec.patch, spec.patch, device=images.device)
    for i in range(b):
        for j in range(spec.scales):
            s = round(spec.window(j))
            x0, y0 = int(px[i, 0]) - s // 2, int(px[i, 1]) - s // 2
            crop = torch.zeros(c, s, s, device=images.device)
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
            if xb > xa and yb > ya:
                crop[:, ya - y0:yb - y0, xa - x0:xb - x0] = images[i, :, ya:yb, xa:xb]
            out[i, j] = F.interpolate(crop[None], size=(spec.patch, spec.patch), mode="area")[0]
    return out


class _NaiveSensor:
    def __init__(self, images: torch.Tensor, spec: RetinaSpec):
        self.images, self.spec = images, spec

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        return naive_glimpse(self.images, loc, self.spec)


def measure_throughput(cfg: ExperimentConfig, batch: int, *, device: str = "auto",
                       steps: int = 20, warmup: int = 3, sensor: str = "retina",
                       amp: bool = False, compile: bool = False) -> dict[str, Any]:
    """Images/s of full training steps (rollout forward + hybrid loss backward + optimiser
    step) on random canvases of the config's size."""
    dev = resolve_device(device)
    canvas = cfg.data.canvas_size
    model = RecurrentAttentionModel(cfg.model).to(dev)
    opt = build_optimizer(model, cfg)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(batch, 1, canvas, canvas, device=dev, generator=gen)
    y = torch.randint(0, 10, (batch,), device=dev, generator=gen)
    make: Callable[[torch.Tensor], Any] = (
        (lambda im: RetinaSensor(im, model.spec)) if sensor == "retina"
        else (lambda im: _NaiveSensor(im, model.spec)))
    unroll = torch.compile(model.unroll) if compile else model.unroll

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
            traj = unroll(make(x), batch, generator=gen)
            loss = hybrid_loss(traj, y).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"bench": "train_throughput", "config": cfg.name, "sensor": sensor, "batch": batch,
            "device": str(dev), "threads": torch.get_num_threads(), "amp": amp,
            "compile": compile, "steps": steps, "seconds": dt,
            "images_per_s": batch * steps / dt,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """A plain fixed-width table (after the JSON lines)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def mnist_table(cfg: ExperimentConfig, archs: list[str], log=print) -> list[dict[str, Any]]:
    """Train each row of the paper's table on the config's task; our errors beside the paper's."""
    rows = []
    for arch in archs:
        c = replace(cfg, name=f"{cfg.name}-{arch}", model=replace(cfg.model, arch=arch))
        c.validate()
        summary = Trainer(c, log=log).fit()
        row = {"bench": "mnist_table", "task": cfg.data.task, "model": arch,
               "glimpses": cfg.model.glimpses if arch.startswith("ram") else None,
               "ours_stochastic": summary["test_error_stochastic"],
               "ours_mean": summary["test_error_mean"],
               "ours_m_avg": summary["test_error_m_avg"],
               "paper_nips": PAPER_NIPS.get(cfg.data.task, {}).get(arch),
               "test_size": summary["test_size"], "epochs": summary["epochs"],
               "minutes": summary["elapsed_s"] / 60, "digits": summary["digits"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print_table(rows, ["task", "model", "ours_stochastic", "ours_mean", "ours_m_avg",
                       "paper_nips", "test_size", "epochs", "minutes"])
    return rows


def synthetic_benchmark(out_dir: str, *, steps: int = 1500, batch: int = 128, seed: int = 0,
                        eval_size: int = 1000, overrides: list[str] | None = None, log=None
                        ) -> dict[str, dict[str, Any]]:
    """The synthetic MNIST benchmark (in pytest): RAM vs the random-glimpse agent, trained the
    same way on generated digits, 60x60 cluttered, fixed seeds, CPU, a few minutes at most.

    Returns ``{arch: summary}``; prints one JSON line per agent and a table.
    """
    per_epoch = min(steps, 250)
    base = ["data.source=synthetic", "data.synthetic_count=6000", "data.task=cluttered60",
            f"data.eval_size={eval_size}", f"train.batch_size={batch}",
            f"train.steps_per_epoch={per_epoch}", f"train.epochs={max(1, steps // per_epoch)}",
            "train.lr=0.002", "train.warmup_steps=100", "train.eval_samples=4",
            "train.patience=1000", f"train.seed={seed}", "train.progress=false",
            *(overrides or [])]
    rows, out = [], {}
    for arch in ("ram", "ram_random"):
        cfg = load_config(None, base + [f"model.arch={arch}", f"name=synthetic-{arch}",
                                        f"train.out_dir={out_dir}/{arch}"])
        s = Trainer(cfg, log=log or (lambda *_: None)).fit()
        row = {"bench": "synthetic_mnist", "task": "cluttered60", "model": arch,
               "steps": s["steps"], "error_stochastic": s["test_error_stochastic"],
               "error_mean": s["test_error_mean"], "error_m_avg": s["test_error_m_avg"],
               "on_target": s.get("test_on_target"), "seconds": s["elapsed_s"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        out[arch] = s
    print_table(rows, ["model", "steps", "error_stochastic", "error_mean", "error_m_avg",
                       "on_target", "seconds"])
    return out
