"""``python -m ram_wsi`` == ``ram-wsi``."""

import sys

from .cli import main

sys.exit(main())
