"""Convert a whole-slide image to OME-Zarr: ``python pipelines/convert.py SRC DST [--chunk 512]
[--workers N]`` (the same as ``ram-wsi convert``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ram_wsi.slide.convert import cli

if __name__ == "__main__":
    raise SystemExit(cli())
