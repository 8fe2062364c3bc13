"""Scoring slides with a trained agent: what a scoring run writes per slide.

* :mod:`.outputs`: the QuPath GeoJSON of where the agent looked and what it decided, and the
  annotated thumbnail -- built from :func:`ram_wsi.train.slide_eval.rollout_slides` rows;
* :mod:`.locks`: per-slide locks (pid, host, time; stale ones taken over), so two runs on one
  output folder never score the same slide twice.
"""

from .locks import SlideLock
from .outputs import annotated_thumbnail, class_colors, slide_geojson, write_geojson, write_png

__all__ = ["SlideLock", "annotated_thumbnail", "class_colors", "slide_geojson", "write_geojson",
           "write_png"]
