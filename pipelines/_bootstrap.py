"""Make ``import ram_wsi`` work when a pipeline runs from a checkout without an install
(e.g. ``ray job submit --working-dir .``): put the repository root on ``sys.path``."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
