"""Benchmark lazy glimpses on generated slides: OpenSlide (JPEG TIFF) vs OME-Zarr, 8k^2 vs 131k^2.

    python pipelines/bench_glimpse.py                       # the full run (slides cached)
    python pipelines/bench_glimpse.py --sizes 8192 --n-cold 100 --no-memory   # a short one
    ram-wsi bench glimpse --patch 32 --out bench-results/glimpse

Measured per (backend, slide size), at random tissue locations, one torch thread:

* ``cold``: OpenSlide's tile cache at 0 bytes (it keeps nothing) and this package's block
  cache emptied before every single glimpse (handles stay open). This is "cold decode", not
  "cold disk": every file of the slide is read once into the OS page cache before it is
  measured (:func:`warm_page_cache`), so that the disk and the kernel's reclaimer -- which
  differ from machine to machine and drop the pages of a 1 GB slide within minutes here --
  do not blur CPU figures meant to compare decoders.
* ``warm``: every tile already decoded (Zarr: in the block cache; OpenSlide: in its own
  ``OpenSlideCache``, ``--openslide-warm-mb``); batches of ``--batch`` glimpses.
* ``naive``: read each scale's whole extent at level 0 (no pyramid), area-downscale it -- cold as
  above. ``speedup_vs_naive`` = naive time / lazy cold time.

Every figure comes as wall time and as CPU time of this process (``time.process_time``, all
threads): on a shared machine the CPU time is what a glimpse costs a core ("per core" figures),
the wall time adds waiting for one. Disk waits are in wall time only.

Then ``size_ratio``: the largest slide vs the smallest, measured in alternating rounds so that
drifting load hits both alike (goal <= 1.2), and a memory check in a fresh process:
``--mem-glimpses`` glimpses over ``--mem-slides`` slides with a configured cache, peak RSS
reported against it.

Output: one JSON object per line on stdout, a short table on stderr; ``--out DIR`` also writes
``DIR/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..commands.bench import MEM_OPTS  # the options' one definition
from ..retina import RetinaSpec, resample
from ..slide import cache as slide_cache
from ..slide import open_source, tissue_mask, write_synthetic_slide
from . import _report

__all__ = ["main", "naive_glimpse"]

RESULTS: list[dict] = []

# PHASE_OPTS, MEM_OPTS: the plain-int options, as (flag, default): the timed phases, and the
# memory check's (which the memory child process is handed again, see ``_memory_child_argv``).
# What the memory child process needs from the parent's arguments besides MEM_OPTS.
CHILD_FLAGS = ("--cache-dir", "--patch", "--scales", "--scale-factor", "--base", "--threads")


def emit(rec: dict) -> None:
    _report.emit(rec, RESULTS)


def slide_paths(cache_dir: Path, size: int, seed: int = 0) -> dict[str, Path]:
    out = {}
    for fmt in ("tiff", "zarr"):
        p = cache_dir / f"synth_{size}_s{seed}.{fmt}"
        if not (p.exists() and Path(str(p) + ".json").exists()):
            t0 = time.perf_counter()
            meta = write_synthetic_slide(p, size, seed=seed, fmt=fmt)
            emit({"event": "generated", "path": str(p), "size": size, "fmt": fmt,
                  "seconds": round(time.perf_counter() - t0, 2), "tiles": meta["tiles"]})
        out[fmt] = p
    return out


def warm_page_cache(path: Path) -> float:
    """Read every file of a slide (a file, or a store's directory tree) once, so that the OS
    page cache holds it; returns the seconds it took."""
    t0 = time.perf_counter()
    files = [path] if path.is_file() else [Path(r) / f for r, _, fs in os.walk(path) for f in fs]
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass
    return time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def make_cold() -> None:
    slide_cache.block_cache().clear()


def naive_glimpse(src, loc: np.ndarray, spec: RetinaSpec) -> torch.Tensor:
    """Each scale's full extent read at level 0 and area-downscaled (no pyramid)."""
    w0, h0 = src.dimensions
    px = (loc + 1) * 0.5 * np.array([w0, h0])
    outs = []
    for j in range(spec.scales):
        win = spec.window(j)
        x0 = int(np.floor(px[0] - win / 2))
        y0 = int(np.floor(px[1] - win / 2))
        n = int(np.ceil(win)) + 1
        reg = src.read_region(0, x0, y0, n, n, use_cache=False)
        t = torch.from_numpy(reg)[None].float().div_(255)
        outs.append(resample(t, torch.tensor([px[0] - win / 2 - x0]),
                             torch.tensor([px[1] - win / 2 - y0]), spec.pixel_factor(j),
                             spec.pixel_factor(j), spec.patch, fill=1.0))
    return torch.stack(outs, 1)


class Clock:
    """Wall and CPU time (all threads of this process) of a block: on a shared machine the CPU
    time is what a glimpse costs a core; the wall time includes waiting for one."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def cold_run(src, locs: np.ndarray, spec: RetinaSpec, fn=None) -> tuple[list, list]:
    wall, cpu = [], []
    for i in range(len(locs)):
        make_cold()
        with Clock() as c:
            if fn is None:
                src.glimpse(locs[i:i + 1], spec)
            else:
                fn(src, locs[i], spec)
        wall.append(c.wall)
        cpu.append(c.cpu)
    return wall, cpu


def warm_run(src, locs: np.ndarray, spec: RetinaSpec, reps: int) -> tuple[list, list]:
    src.glimpse(locs, spec)  # fill the cache
    misses = slide_cache.block_cache().misses
    wall, cpu = [], []
    for _ in range(reps):
        with Clock() as c:
            src.glimpse(locs, spec)
        wall.append(c.wall)
        cpu.append(c.cpu)
    assert slide_cache.block_cache().misses == misses, "warm pass missed the cache"
    return wall, cpu


def set_phase(cold: bool, args) -> None:
    """Cold: OpenSlide keeps no tile (0-byte cache); warm: it keeps ``--openslide-warm-mb``.
    Changing it reopens OpenSlide handles lazily (the first, untimed glimpse of a phase)."""
    slide_cache.set_cache_bytes(block_bytes=1 << 30,
                                openslide_bytes=0 if cold else args.openslide_warm_mb << 20)


def cold_start(paths: list[Path], spec: RetinaSpec, args, seed: int):
    """The prelude of a cold measurement: empty caches, the cold phase, the slides opened,
    ``--n-cold`` tissue locations on each, one untimed glimpse each (handles open, imports
    done) and their files in the page cache. Returns ``(sources, masks, locations, seconds
    spent warming the page cache per slide)``."""
    slide_cache.clear_caches()
    set_phase(True, args)
    srcs = [open_source(p) for p in paths]
    masks = [tissue_mask(s, 1024) for s in srcs]
    locs = [m.sample(args.n_cold, seed=seed).astype(np.float64) for m in masks]
    load_avg = os.getloadavg()[0]
    for s in srcs:
        s.glimpse(np.zeros((1, 2)), spec)
    return srcs, masks, locs, [warm_page_cache(p) for p in paths], load_avg


def bench_one(backend: str, path: Path, size: int, spec: RetinaSpec, args) -> dict:
    (src,), (mask,), (locs,), (page_s,), load_avg = cold_start([path], spec, args, seed=1)
    rec = {"backend": backend, "size": size, "spec": vars(spec), "tissue": mask.fraction,
           "load_avg_1m": load_avg, "page_cache_warm_s": round(page_s, 2)}
    # cold: nothing decoded is cached
    w, c = cold_run(src, locs, spec)
    rec.update(cold_glimpses_per_s=len(w) / sum(w), cold_glimpses_per_cpu_s=len(c) / sum(c),
               cold_p50_ms=pct(w, 50) * 1e3, cold_p99_ms=pct(w, 99) * 1e3,
               cold_cpu_p50_ms=pct(c, 50) * 1e3, cold_cpu_p99_ms=pct(c, 99) * 1e3)
    # naive: each scale's whole extent at level 0, same locations, same cold rule
    nw, nc = cold_run(src, locs[:args.n_naive], spec, naive_glimpse)
    rec.update(naive_glimpses_per_s=len(nw) / sum(nw), naive_cpu_p50_ms=pct(nc, 50) * 1e3,
               speedup_vs_naive_cpu=(sum(nc) / len(nc)) / (sum(c[:len(nc)]) / len(nc)),
               speedup_vs_naive_wall=(sum(nw) / len(nw)) / (sum(w[:len(nw)]) / len(nw)))
    # warm: a batch whose tiles are all in the cache
    set_phase(False, args)
    wl = mask.sample(args.batch, seed=2).astype(np.float64)
    bw, bc = warm_run(src, wl, spec, args.warm_reps)
    rec.update(warm_batch=args.batch, warm_glimpses_per_s=args.batch / pct(bw, 50),
               warm_glimpses_per_cpu_s=args.batch / pct(bc, 50),
               warm_batch_p50_ms=pct(bw, 50) * 1e3, warm_batch_p99_ms=pct(bw, 99) * 1e3)
    # warm single glimpses (the latency of one glimpse whose blocks are cached)
    sw, sc = [], []
    for i in range(min(args.batch, 200)):
        with Clock() as k:
            src.glimpse(wl[i:i + 1], spec)
        sw.append(k.wall)
        sc.append(k.cpu)
    rec.update(warm_single_p50_ms=pct(sw, 50) * 1e3, warm_single_p99_ms=pct(sw, 99) * 1e3,
               warm_single_cpu_p50_ms=pct(sc, 50) * 1e3)
    rec["goals"] = {"cold_per_core>=1000": rec["cold_glimpses_per_cpu_s"] >= 1000,
                    "warm>=20000": rec["warm_glimpses_per_cpu_s"] >= 20000,
                    "vs_naive>=10": rec["speedup_vs_naive_cpu"] >= 10}
    emit(rec)
    return rec


def size_ratio(backend: str, small: Path, large: Path, spec: RetinaSpec, args) -> None:
    """Small and large slide measured in alternation (load on a shared machine drifts)."""
    srcs, _, locs, _, _ = cold_start([small, large], spec, args, seed=3)
    cw, cc = [[], []], [[], []]
    k = max(1, args.n_cold // args.rounds)
    for r in range(args.rounds):
        for i in (0, 1):
            w, c = cold_run(srcs[i], locs[i][r * k:(r + 1) * k], spec)
            cw[i] += w
            cc[i] += c
    # Warm: the same batch each time. Over the whole slide, the large slide's 256 glimpses touch
    # ~3x as many distinct tiles as the small one's (whose coarse levels are a few tiles), so
    # they miss the CPU caches more; "same area" puts the large slide's batch in a window of
    # the small slide's size (around one of its tissue locations), which isolates slide size.
    ws, wl = srcs[0].dimensions, srcs[1].dimensions
    shrink = np.array([ws[0] / wl[0], ws[1] / wl[1]])
    centre = np.clip(locs[1][0], -1 + shrink, 1 - shrink)
    batches = [locs[0][:args.batch], locs[1][:args.batch],
               centre + locs[0][:args.batch] * shrink]
    wc: list[list[float]] = [[], [], []]
    set_phase(False, args)
    for r in range(args.rounds):
        for i, b in enumerate(batches):
            slide_cache.block_cache().clear()
            wc[i] += warm_run(srcs[min(i, 1)], b, spec, 3)[1]
    ratio = pct(cc[1], 50) / pct(cc[0], 50)
    emit({"event": "size_ratio", "backend": backend, "small": str(small.name),
          "large": str(large.name), "rounds": args.rounds,
          "cold_cpu_p50_ratio": ratio,
          "cold_cpu_mean_ratio": float(np.mean(cc[1]) / np.mean(cc[0])),
          "cold_wall_p50_ratio": pct(cw[1], 50) / pct(cw[0], 50),
          "warm_cpu_ratio": pct(wc[1], 50) / pct(wc[0], 50),
          "warm_same_area_cpu_ratio": pct(wc[2], 50) / pct(wc[0], 50),
          "goal_cold_ratio<=1.2": ratio <= 1.2,
          "cold_cpu_p50_ms": [pct(cc[0], 50) * 1e3, pct(cc[1], 50) * 1e3],
          "warm_cpu_batch_ms": [pct(x, 50) * 1e3 for x in wc]})


def memory_slides(args) -> list[Path]:
    d = Path(args.cache_dir) / f"mem_{args.mem_size}"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.mem_slides):
        p = d / f"s{i:03d}.{'zarr' if i % 2 else 'tiff'}"
        if not (p.exists() and Path(str(p) + ".json").exists()):
            write_synthetic_slide(p, args.mem_size, seed=100 + i, fmt=p.suffix[1:])
        paths.append(p)
    return paths


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def memory_check(args) -> None:
    """Runs in a fresh process (slides generated beforehand by the parent): many slides,
    bounded caches, peak RSS."""
    paths = memory_slides(args)
    import gc

    gc.collect()
    block = args.mem_cache_mb << 20
    osl = args.mem_openslide_mb << 20
    slide_cache.set_cache_bytes(block_bytes=block, openslide_bytes=osl)
    slide_cache.set_max_open(args.mem_max_open)
    spec = RetinaSpec(args.patch, args.scales, args.scale_factor, args.base)
    srcs = [open_source(p) for p in paths]
    srcs[0].glimpse(np.zeros((1, 2)), spec)  # imports and first allocations done
    # ru_maxrss survives exec on Linux (it may hold the parent's peak): sample RSS ourselves.
    cur0 = rss_mb()
    peak = cur0
    rng = np.random.default_rng(0)
    per = args.mem_glimpses // len(srcs)
    done = 0
    with Clock() as clk:
        for _ in range(per // 20):
            for s in srcs:
                s.glimpse(rng.uniform(-0.6, 0.6, (20, 2)), spec)
                done += 20
                peak = max(peak, rss_mb())
    dt = clk.wall
    emit({"event": "memory", "slides": len(srcs), "glimpses": done, "seconds": round(dt, 2),
          "cpu_seconds": round(clk.cpu, 2),
          "block_cache_mb": args.mem_cache_mb, "openslide_cache_mb": args.mem_openslide_mb,
          "max_open": args.mem_max_open, "rss_mb_before": round(cur0, 1),
          "rss_mb_peak": round(peak, 1), "rss_mb_after": round(rss_mb(), 1),
          "rss_growth_peak_mb": round(peak - cur0, 1),
          "configured_cache_mb": args.mem_cache_mb + args.mem_openslide_mb,
          "block_cache_mb_used": round(slide_cache.block_cache().nbytes / 2**20, 1),
          "open_handles": len(slide_cache.handle_pool()),
          "handles_opened_total": slide_cache.handle_pool().opened})


def _memory_child_argv(args) -> list[str]:
    """The memory check's command line: the parent's values of the options it reads."""
    argv = ["--memory-only"]
    for flag in (*CHILD_FLAGS, *(f for f, _ in MEM_OPTS)):
        argv += [flag, str(getattr(args, flag[2:].replace("-", "_")))]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench glimpse``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("glimpse", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench glimpse`` with checked arguments."""
    torch.set_num_threads(args.threads)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    emit({"event": "config", "argv": sys.argv, "torch_threads": args.threads,
          "cpus": os.cpu_count(), "load_avg": os.getloadavg()})
    if args.memory_only:
        memory_check(args)
        return _finish(args)

    spec = RetinaSpec(args.patch, args.scales, args.scale_factor, args.base)
    recs = []
    for size in args.sizes:
        paths = slide_paths(Path(args.cache_dir), size)
        for b in args.backends:
            recs.append(bench_one(b, paths["tiff" if b == "openslide" else "zarr"], size, spec,
                                  args))
    if len(args.sizes) >= 2:
        small = slide_paths(Path(args.cache_dir), min(args.sizes))
        large = slide_paths(Path(args.cache_dir), max(args.sizes))
        for b in args.backends:
            k = "tiff" if b == "openslide" else "zarr"
            size_ratio(b, small[k], large[k], spec, args)
    if not args.no_memory:
        memory_slides(args)  # generated here, so the measuring process only reads
        cmd = [sys.executable, "-m", "ram_wsi.bench.glimpse", *_memory_child_argv(args)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        for line in out.stdout.splitlines():
            rec = json.loads(line)
            if rec.get("event") == "memory":
                emit(rec)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
    table(recs)
    return _finish(args)


def _finish(args) -> int:
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _report.write_jsonl(out / "results.jsonl", RESULTS, mode="a")
    return 0


def table(recs: list[dict]) -> None:
    cols = ["backend", "size", "cold_glimpses_per_cpu_s", "cold_cpu_p50_ms", "cold_cpu_p99_ms",
            "cold_p50_ms", "warm_glimpses_per_cpu_s", "warm_single_cpu_p50_ms",
            "speedup_vs_naive_cpu"]
    print(" | ".join(cols + ["goals missed"]), file=sys.stderr)
    for r in recs:
        missed = [k for k, ok in r["goals"].items() if not ok] or ["none"]
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
              + " | " + ", ".join(missed), file=sys.stderr)
    for r in RESULTS:
        if r.get("event") == "size_ratio":
            print(f"{r['backend']}: {r['large']} / {r['small']} cold CPU p50 ratio "
                  f"{r['cold_cpu_p50_ratio']:.2f} (goal <= 1.2), warm {r['warm_cpu_ratio']:.2f} "
                  f"(same area {r['warm_same_area_cpu_ratio']:.2f})",
                  file=sys.stderr)
        elif r.get("event") == "memory":
            print(f"memory: {r['glimpses']} glimpses over {r['slides']} slides, RSS +"
                  f"{r['rss_growth_peak_mb']} MB at peak with {r['configured_cache_mb']} MB of "
                  f"caches configured", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
