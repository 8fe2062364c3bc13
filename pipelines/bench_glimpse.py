"""Benchmark lazy glimpses on generated slides: OpenSlide (JPEG TIFF) vs OME-Zarr, 8k^2 vs 131k^2.

    python pipelines/bench_glimpse.py                       # the full run (slides cached)
    python pipelines/bench_glimpse.py --sizes 8192 --n-cold 200 --quick   # a short one
    python pipelines/bench_glimpse.py --out bench-results/glimpse

Measured per (backend, slide size), at random tissue locations, one torch thread:

* ``cold``: OpenSlide's tile cache off and this package's block cache emptied before every
  single glimpse (the handle stays open; the OS page cache is NOT dropped -- the files were just
  written or read, so this is "cold decode", not "cold disk").
* ``warm``: every block already decoded in the block cache; batches of ``--batch`` glimpses.
* ``naive``: read each scale's whole extent at level 0 (no pyramid), area-downscale it -- cold as
  above. ``speedup_vs_naive`` = naive time / lazy cold time.

Then ``size_ratio`` = p50 cold latency on the largest slide / on the smallest (goal <= 1.2), and a
memory check in a fresh process: ``--mem-glimpses`` glimpses over ``--mem-slides`` slides with a
configured cache, peak RSS reported against it.

Output: one JSON object per line on stdout, a short table on stderr; ``--out DIR`` also writes
``DIR/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ram_wsi.retina import RetinaSpec, resample
from ram_wsi.slide import cache as slide_cache
from ram_wsi.slide import open_source, tissue_mask, write_synthetic_slide

RESULTS: list[dict] = []


def emit(rec: dict) -> None:
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)


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


def bench_one(backend: str, path: Path, size: int, spec: RetinaSpec, args) -> dict:
    slide_cache.clear_caches()
    src = open_source(path)
    mask = tissue_mask(src, 1024)
    locs = mask.sample(args.n_cold, seed=1).astype(np.float64)
    rec = {"backend": backend, "size": size, "spec": vars(spec), "tissue": mask.fraction}

    # cold: nothing decoded is cached (OpenSlide's cache is 0 bytes for this run)
    lat = []
    t_all = time.perf_counter()
    for i in range(len(locs)):
        make_cold()
        t0 = time.perf_counter()
        src.glimpse(locs[i:i + 1], spec)
        lat.append(time.perf_counter() - t0)
    t_all = time.perf_counter() - t_all
    rec.update(cold_glimpses_per_s=len(locs) / sum(lat), cold_p50_ms=pct(lat, 50) * 1e3,
               cold_p99_ms=pct(lat, 99) * 1e3)

    # naive: same locations, same cold rule
    nl = []
    for i in range(min(len(locs), args.n_naive)):
        make_cold()
        t0 = time.perf_counter()
        naive_glimpse(src, locs[i], spec)
        nl.append(time.perf_counter() - t0)
    rec.update(naive_glimpses_per_s=len(nl) / sum(nl), naive_p50_ms=pct(nl, 50) * 1e3,
               speedup_vs_naive=(sum(nl) / len(nl)) / (sum(lat) / len(lat)))

    # warm: a batch whose blocks are all in the cache
    wl = torch.from_numpy(mask.sample(args.batch, seed=2).astype(np.float64))
    src.glimpse(wl, spec)  # fill the cache
    hits0 = slide_cache.block_cache().misses
    bl = []
    for _ in range(args.warm_reps):
        t0 = time.perf_counter()
        src.glimpse(wl, spec)
        bl.append(time.perf_counter() - t0)
    assert slide_cache.block_cache().misses == hits0, "warm pass missed the cache"
    rec.update(warm_glimpses_per_s=args.batch / pct(bl, 50),
               warm_batch=args.batch, warm_batch_p50_ms=pct(bl, 50) * 1e3,
               warm_batch_p99_ms=pct(bl, 99) * 1e3)
    # warm single glimpses (latency of one glimpse when its blocks are cached)
    sl = []
    for i in range(min(args.batch, 200)):
        t0 = time.perf_counter()
        src.glimpse(wl[i:i + 1], spec)
        sl.append(time.perf_counter() - t0)
    rec.update(warm_single_p50_ms=pct(sl, 50) * 1e3, warm_single_p99_ms=pct(sl, 99) * 1e3,
               warm_single_glimpses_per_s=len(sl) / sum(sl))
    emit(rec)
    return rec


def memory_check(args) -> None:
    """Runs in a fresh process: many slides, bounded caches, peak RSS."""
    cache_dir = Path(args.cache_dir)
    d = cache_dir / f"mem_{args.mem_size}"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.mem_slides):
        p = d / f"s{i:03d}.{'zarr' if i % 2 else 'tiff'}"
        if not (p.exists() and Path(str(p) + ".json").exists()):
            write_synthetic_slide(p, args.mem_size, seed=100 + i, fmt=p.suffix[1:])
        paths.append(p)
    import gc

    gc.collect()
    block = args.mem_cache_mb << 20
    osl = args.mem_openslide_mb << 20
    slide_cache.set_cache_bytes(block_bytes=block, openslide_bytes=osl)
    slide_cache.set_max_open(args.mem_max_open)
    spec = RetinaSpec(args.patch, args.scales, args.scale_factor, args.base)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    srcs = [open_source(p) for p in paths]
    rng = np.random.default_rng(0)
    per = args.mem_glimpses // len(srcs)
    t0 = time.perf_counter()
    done = 0
    for r in range(per // 20):
        for s in srcs:
            s.glimpse(rng.uniform(-0.6, 0.6, (20, 2)), spec)
            done += 20
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit({"event": "memory", "slides": len(srcs), "glimpses": done, "seconds": round(dt, 2),
          "block_cache_mb": args.mem_cache_mb, "openslide_cache_mb": args.mem_openslide_mb,
          "max_open": args.mem_max_open, "peak_rss_mb_before": round(rss0, 1),
          "peak_rss_mb_after": round(rss1, 1), "rss_growth_mb": round(rss1 - rss0, 1),
          "block_cache_mb_used": round(slide_cache.block_cache().nbytes / 2**20, 1),
          "open_handles": len(slide_cache.handle_pool()),
          "handles_opened_total": slide_cache.handle_pool().opened})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 131072])
    ap.add_argument("--cache-dir", default=os.environ.get("RAM_WSI_BENCH_DIR",
                                                          "/tmp/ram_wsi_bench"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--backends", nargs="+", default=["openslide", "zarr"])
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--scales", type=int, default=3)
    ap.add_argument("--scale-factor", type=float, default=4.0)
    ap.add_argument("--base", type=float, default=1.0)
    ap.add_argument("--n-cold", type=int, default=300)
    ap.add_argument("--n-naive", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warm-reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-slides", type=int, default=50)
    ap.add_argument("--mem-glimpses", type=int, default=10000)
    ap.add_argument("--mem-size", type=int, default=4096)
    ap.add_argument("--mem-cache-mb", type=int, default=128)
    ap.add_argument("--mem-openslide-mb", type=int, default=32)
    ap.add_argument("--mem-max-open", type=int, default=16)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    emit({"event": "config", "argv": sys.argv, "torch_threads": args.threads,
          "cpus": os.cpu_count(), "load_avg": os.getloadavg()})
    if args.memory_only:
        memory_check(args)
        return _finish(args)

    spec = RetinaSpec(args.patch, args.scales, args.scale_factor, args.base)
    # Cold means no decoded tile survives between glimpses: OpenSlide's own cache is off.
    slide_cache.set_cache_bytes(block_bytes=1 << 30, openslide_bytes=0)
    recs = []
    for size in args.sizes:
        paths = slide_paths(Path(args.cache_dir), size)
        for b in args.backends:
            recs.append(bench_one(b, paths["tiff" if b == "openslide" else "zarr"], size, spec,
                                  args))
    for b in args.backends:
        rs = sorted((r for r in recs if r["backend"] == b), key=lambda r: r["size"])
        if len(rs) >= 2:
            emit({"event": "size_ratio", "backend": b, "small": rs[0]["size"],
                  "large": rs[-1]["size"],
                  "cold_p50_ratio": rs[-1]["cold_p50_ms"] / rs[0]["cold_p50_ms"],
                  "cold_mean_ratio": rs[0]["cold_glimpses_per_s"] / rs[-1]["cold_glimpses_per_s"],
                  "warm_ratio": rs[0]["warm_glimpses_per_s"] / rs[-1]["warm_glimpses_per_s"]})
    if not args.no_memory:
        cmd = [sys.executable, __file__, "--memory-only", "--cache-dir", args.cache_dir,
               "--patch", str(args.patch), "--scales", str(args.scales),
               "--scale-factor", str(args.scale_factor), "--base", str(args.base),
               "--mem-slides", str(args.mem_slides), "--mem-glimpses", str(args.mem_glimpses),
               "--mem-size", str(args.mem_size), "--mem-cache-mb", str(args.mem_cache_mb),
               "--mem-openslide-mb", str(args.mem_openslide_mb),
               "--mem-max-open", str(args.mem_max_open), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
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
        with open(out / "results.jsonl", "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in RESULTS)
    return 0


def table(recs: list[dict]) -> None:
    cols = ["backend", "size", "cold_glimpses_per_s", "cold_p50_ms", "cold_p99_ms",
            "warm_glimpses_per_s", "warm_single_p50_ms", "naive_glimpses_per_s",
            "speedup_vs_naive"]
    print(" | ".join(cols), file=sys.stderr)
    for r in recs:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols),
              file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
