"""Score a folder of slides with a trained slide agent -- the same as ``ram-wsi score``, as a
script that ``ray job submit --working-dir . -- python pipelines/score.py ...`` can run.

    python pipelines/score.py SLIDES --checkpoint runs/needle_slides/best.pt --out scores/
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: the package is the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ram_wsi.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
