"""Glimpse benchmark (OpenSlide vs OME-Zarr, 8k^2 vs 131k^2): see ``ram_wsi.slide.bench``.

    python pipelines/bench_glimpse.py [--sizes 8192 131072] [--patch 64] [--out DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ram_wsi.slide.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
