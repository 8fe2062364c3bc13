"""ram_wsi: Recurrent Attention Models for images too large to look at whole.

The public API is small on purpose; everything else is internal and may change.

``RetinaSpec`` and ``glimpse`` are loaded on first use (PEP 562): importing the package does not
import torch, so that a command line refuses a mistaken option in a fraction of a second.
"""

from typing import Any

from .errors import CheckpointError, ConfigError, DataError, RamWsiError, SlideError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "RamWsiError",
    "RetinaSpec",
    "SlideError",
    "__version__",
    "glimpse",
]


def __getattr__(name: str) -> Any:
    if name in ("RetinaSpec", "glimpse"):
        from . import retina

        return getattr(retina, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
