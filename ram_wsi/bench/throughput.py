"""Training throughput (images/s, forward + backward + step): the batched retina vs a
per-sample crop loop, CPU at batch 128 and CUDA at 1024/8192 when present.

    ram-wsi bench throughput [--threads 2] [--batches 128] [--steps 20]
    python pipelines/bench_throughput.py ...        # the same

JSON lines (one per measurement), then a table; speed is always compared with the naive way in
the same run, because these machines are noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..cli_args import config_from_args
from ..config import ExperimentConfig
from ..models import RecurrentAttentionModel, RetinaSensor
from ..retina import RetinaSpec, loc_to_pixels
from ..train.losses import hybrid_loss
from ..train.optim import build_optimizer, resolve_device
from ._report import emit, print_table, write_jsonl

__all__ = ["main", "measure_throughput", "naive_glimpse", "throughput_table"]


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


def throughput_table(cfg: ExperimentConfig, batches: Sequence[int] | None = None, *,
                     steps: int = 20, amp: bool = False, compile: bool = False,
                     skip_naive: bool = False) -> list[dict[str, Any]]:
    """Retina and naive rows on the CPU (and CUDA when present), each printed as a JSON line,
    then a table with the retina's speedup over the naive loop."""
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for b in batches or ([128] if dev == "cpu" else [1024, 8192]):
            for sensor in ("retina", "naive"):
                if sensor == "naive" and (b > 1024 or skip_naive):
                    continue  # a per-sample loop at 8192 takes minutes; the ratio is clear
                n = steps if sensor == "retina" else max(2, steps // 10)
                rows.append(emit(measure_throughput(cfg, b, device=dev, steps=n, sensor=sensor,
                                                    amp=amp and dev == "cuda",
                                                    compile=compile)))
    for r in rows:
        ref = next((q for q in rows if q["sensor"] == "naive" and q["device"] == r["device"]
                    and q["batch"] == r["batch"]), None)
        r["speedup_vs_naive"] = (r["images_per_s"] / ref["images_per_s"]
                                 if ref and r["sensor"] == "retina" else None)
    print_table(rows, ["device", "batch", "sensor", "threads", "images_per_s",
                       "speedup_vs_naive"])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench throughput``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("throughput", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench throughput`` with checked arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir, args.out_dir = args.out_dir, None  # the rows' folder, not a training run's
    rows = throughput_table(config_from_args(args), args.batches, steps=args.steps,
                            amp=args.amp, compile=args.compile, skip_naive=args.skip_naive)
    if out_dir:
        from pathlib import Path

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_jsonl(Path(out_dir) / "throughput.jsonl", rows)
        print(f"wrote {Path(out_dir) / 'throughput.jsonl'}")
    return 0
