"""Scoring slides with a trained agent: what a scoring run writes per slide.

* :mod:`.outputs`: the QuPath GeoJSON of where the agent looked and what it decided, and the
  annotated thumbnail -- built from :func:`ram_wsi.train.slide_eval.rollout_slides` rows.
"""

from .outputs import annotated_thumbnail, class_colors, slide_geojson, write_geojson, write_png

__all__ = ["annotated_thumbnail", "class_colors", "slide_geojson", "write_geojson", "write_png"]
