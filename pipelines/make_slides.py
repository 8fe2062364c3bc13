"""Write a folder of synthetic labelled slides and a manifest CSV (``path,label``).

    python pipelines/make_slides.py OUT_DIR --count 20 --size 8192 [--fmt tiff|zarr]
        [--seed 0] [--tile 256] [--mpp 0.25] [--compression jpeg|none] [--mnist DIR]
    python pipelines/make_slides.py OUT_DIR --kind tissue --tiles DIR --size 16384
        --procedural 600 --count 40 [--fmt mixed] [--region-um 1000 3000] [--split-seed 0]

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
    ap.add_argument("--fmt", choices=["tiff", "zarr", "mixed"], default="tiff",
                    help="test files: TIFF, OME-Zarr, or (tissue) mixed pairs of both "
                         "(default tiff)")
    ap.add_argument("--seed", type=int, default=0, help="slide i uses seed + i")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--mpp", type=float, default=None,
                    help="um per level-0 pixel; 0 = write no physical units (default 0.25; "
                         "tissue 0.5, the tiles' own)")
    ap.add_argument("--compression", choices=["jpeg", "none"], default="jpeg")
    ap.add_argument("--mnist", default=None, help="MNIST idx directory (default ../shared/...)")
    ap.add_argument("--kind", choices=["digit", "needle", "tissue"], default="digit")
    ap.add_argument("--procedural", type=int, default=0,
                    help="needle: this many procedural train slides (+ 10%% val) in the "
                         "manifest; the --count written files are the test split")
    ap.add_argument("--lesion", type=int, default=2048, help="needle lesion diameter, px")
    tissue = ap.add_argument_group("tissue (--kind tissue: mosaics of real H&E tiles)")
    tissue.add_argument("--tiles", type=Path, default=None,
                        help="a folder with class folders H/ AC/ S/ T/ V/ of tiles (default "
                             "../shared/data/tissue/crc_tiles or $RAM_WSI_TILES)")
    tissue.add_argument("--val", type=int, default=None,
                        help="procedural validation slides (default max(2, procedural / 10))")
    tissue.add_argument("--region-um", type=float, nargs=2, default=(1000.0, 3000.0),
                        metavar=("MIN", "MAX"),
                        help="the carcinoma / adenoma region's diameter range, um "
                             "(default 1000 3000: large enough to learn in minutes on 2 cores)")
    tissue.add_argument("--adenoma", type=float, default=0.5,
                        help="share of benign slides with an adenoma region (default 0.5)")
    tissue.add_argument("--tissue-um", type=float, default=20000.0,
                        help="the tissue piece's largest extent, um (default 20000)")
    tissue.add_argument("--split-seed", type=int, default=0,
                        help="seed of the tiles' train/val/test split (default 0)")
    args = ap.parse_args(argv)
    if args.kind == "tissue":
        return _tissue(args)
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
                                         fmt=args.fmt, tile=args.tile,
                                         mpp=(0.25 if args.mpp is None else args.mpp) or None,
                                         compression=args.compression, mnist_dir=args.mnist)
        rows.append((p.name, int(meta["label"])))
        print(json.dumps({"slide": str(p), "label": meta["label"],
                          "target_center_loc": meta["target_center_loc"]}), flush=True)
    publish_mode(write_manifest(args.out / "manifest.csv", rows))
    print(json.dumps({"manifest": str(args.out / "manifest.csv"), "slides": len(rows),
                      "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
    return 0


def _tissue(args: argparse.Namespace) -> int:
    """``--kind tissue``: procedural train / validation slides and ``--count`` test files from
    disjoint tile pools, and the manifest (``path,label,split``)."""
    from ram_wsi.errors import RamWsiError
    from ram_wsi.slide.synth.cohort import tissue_slide_kwargs, write_tissue_cohort
    from ram_wsi.slide.synth.mosaic import default_tiles_dir

    tiles = args.tiles or default_tiles_dir()
    if tiles is None:
        print("make_slides.py: error: --kind tissue needs --tiles DIR (a folder with class "
              "folders H/ AC/ S/ T/ V/)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    scene = tissue_slide_kwargs(tiles, split_seed=args.split_seed, region_um=args.region_um,
                                adenoma=args.adenoma, tissue_um=args.tissue_um)
    try:
        m = write_tissue_cohort(args.out, args.size, tiles, train=args.procedural,
                                val=max(2, args.procedural // 10) if args.val is None
                                else args.val, test=args.count, seed=args.seed, fmt=args.fmt,
                                mpp=0.5 if args.mpp is None else args.mpp, tile=args.tile,
                                scene=scene,
                                log=lambda s: print(json.dumps({"log": s}), flush=True))
    except (RamWsiError, ValueError) as exc:
        print(f"make_slides.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"manifest": str(m), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
