"""ram_wsi: Recurrent Attention Models for images too large to look at whole.

The public API is small on purpose; everything else is internal and may change.
"""

from .errors import CheckpointError, ConfigError, DataError, RamWsiError, SlideError
from .retina import RetinaSpec, glimpse

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
