"""Write a folder of synthetic labelled slides and a manifest CSV (``path,label``).

    python pipelines/make_slides.py OUT_DIR --count 20 --size 8192 [--fmt tiff|zarr]
        [--seed 0] [--tile 256] [--mpp 0.25] [--compression jpeg|none] [--mnist DIR]

Each slide is ``slide_XXXX.<fmt>`` with its sidecar ``slide_XXXX.<fmt>.json`` (label, target
centre in level-0 pixels and in [-1, 1], target size); ``manifest.csv`` lists ``path,label``
(paths relative to the manifest) and is written last, atomically. Labels cycle through 0-9 so
classes are balanced. Slides already present (with their sidecar) are kept, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ram_wsi.data.manifest import write_manifest
from ram_wsi.slide import write_synthetic_slide
from ram_wsi.slide.ngff import publish_mode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write synthetic labelled slides + manifest.csv")
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--size", type=int, default=8192, help="level-0 side in pixels")
    ap.add_argument("--fmt", choices=["tiff", "zarr"], default="tiff")
    ap.add_argument("--seed", type=int, default=0, help="slide i uses seed + i")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--mpp", type=float, default=0.25, help="0 = write no physical units")
    ap.add_argument("--compression", choices=["jpeg", "none"], default="jpeg")
    ap.add_argument("--mnist", default=None, help="MNIST idx directory (default ../shared/...)")
    ap.add_argument("--kind", choices=["digit", "needle"], default="digit")
    ap.add_argument("--procedural", type=int, default=0,
                    help="needle: this many procedural train slides (+ 10%% val) in the "
                         "manifest; the --count written files are the test split")
    ap.add_argument("--lesion", type=int, default=2048, help="needle lesion diameter, px")
    args = ap.parse_args(argv)
    if args.kind == "needle":
        from ram_wsi.bench.needle import write_needle_cohort

        t0 = time.perf_counter()
        m = write_needle_cohort(args.out, args.size, train=args.procedural,
                                val=max(2, args.procedural // 10), test=args.count,
                                lesion=args.lesion, seed=args.seed)
        print(json.dumps({"manifest": str(m), "seconds": round(time.perf_counter() - t0, 2)}))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for i in range(args.count):
        p = args.out / f"slide_{i:04d}.{args.fmt}"
        side = Path(str(p) + ".json")
        if p.exists() and side.exists():
            meta = json.loads(side.read_text())
        else:
            meta = write_synthetic_slide(p, args.size, seed=args.seed + i, label=i % 10,
                                         fmt=args.fmt, tile=args.tile, mpp=args.mpp or None,
                                         compression=args.compression, mnist_dir=args.mnist)
        rows.append((p.name, int(meta["label"])))
        print(json.dumps({"slide": str(p), "label": meta["label"],
                          "target_center_loc": meta["target_center_loc"]}), flush=True)
    publish_mode(write_manifest(args.out / "manifest.csv", rows))
    print(json.dumps({"manifest": str(args.out / "manifest.csv"), "slides": len(rows),
                      "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
