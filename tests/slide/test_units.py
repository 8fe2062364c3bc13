"""Physical units are honest (issue 26, section 5): one rule (ram_wsi.slide.units) for every
reader and for convert -- a resolution without a length unit, or coarser than 10 um/px (2,540
dpi), is a placeholder, not a microscope's pixel size. ``boxes.tiff`` carries TIFF's 72 dpi,
which OpenSlide reports as 352.78 um/px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import ImageSource, OpenSlideSource, ZarrSource, convert_to_ome_zarr, open_source
from ram_wsi.slide.ngff import ngff_attributes
from ram_wsi.slide.units import MAX_MPP, mpp_from_resolution, slide_mpp

SLIDES = Path(__file__).parents[2].parent / "shared" / "data" / "slides"
needs_shared = pytest.mark.skipif(not (SLIDES / "boxes.tiff").exists(),
                                  reason="../shared/data/slides is not here")
UM = RetinaSpec(8, 2, 2.0, 1.0)


@pytest.mark.parametrize("x, unit, want", [
    (0.25, "micrometer", 0.25),
    (0.000499, "millimeter", 0.499),            # DICOM's pixel spacing
    (10.0, "micrometer", 10.0),                 # a 1x objective: the coarsest taken
    (10.01, "micrometer", None),
    (352.7777, "micrometer", None),             # 72 dpi
    (0.25, None, None),                         # no unit: an aspect ratio
    (0.25, "pixel", None),
    (0.0, "micrometer", None),
    (float("nan"), "micrometer", None),
    ("garbage", "micrometer", None),
])
def test_the_rule(x, unit, want):
    rule = slide_mpp(x, x, unit)
    if want is None:
        assert rule.mpp is None
    else:
        assert rule.mpp == pytest.approx((want, want))
        assert rule.note is None


def test_resolutions_in_dots_per_unit():
    assert mpp_from_resolution(72, 72, "inch").mpp is None
    assert "placeholder" in mpp_from_resolution(72, 72, "inch").note
    assert mpp_from_resolution(28.3465, 28.3465, "centimeter").mpp is None  # 72 dpi in cm
    assert mpp_from_resolution(2540, 2540, "inch").mpp == pytest.approx((MAX_MPP, MAX_MPP))
    assert mpp_from_resolution(40000, 40000, "centimeter").mpp == pytest.approx((0.25, 0.25))
    assert mpp_from_resolution(40000, 40000, None).mpp is None  # unitless: aspect only
    assert mpp_from_resolution(0, 0, "inch").mpp is None and mpp_from_resolution(0, 0, "inch").note is None


@needs_shared
def test_boxes_tiff_through_openslide_has_no_mpp():
    import openslide

    with openslide.OpenSlide(str(SLIDES / "boxes.tiff")) as s:  # what OpenSlide says
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(352.78, abs=0.01)
    src = open_source(SLIDES / "boxes.tiff")
    assert isinstance(src, OpenSlideSource)
    assert src.mpp is None
    meta = src.metadata
    assert meta["physical_units"] is False and meta["mpp"] is None and meta["mpp_xy"] is None
    assert "placeholder" in meta["mpp_note"] and "352.778" in meta["mpp_note"]
    assert "no physical units" in meta["units"]
    json.dumps(meta)
    with pytest.raises(SlideError) as e:
        src.glimpse(torch.zeros(1, 2), UM, units="um")
    assert "boxes.tiff" in str(e.value) and "placeholder" in e.value.cause
    # Slides that state a microscope's size keep it (Aperio MPP; DICOM pixel spacing).
    assert open_source(SLIDES / "small.svs").mpp == pytest.approx(0.499, abs=1e-3)
    assert open_source(SLIDES / "boxes_0.dcm").mpp == pytest.approx(0.499, abs=1e-3)


def _rgb(h=40, w=60):
    return (np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name, save, want", [
    ("72.png", {"dpi": (72, 72)}, None),
    ("72.jpg", {"dpi": (72, 72), "quality": 95}, None),
    ("jfif_aspect.jpg", {"quality": 95}, None),           # JFIF unit 0: an aspect ratio
    ("fine.png", {"dpi": (50800, 50800)}, 0.5),
    ("fine.jpg", {"dpi": (50800, 50800), "quality": 95}, 0.5),
])
def test_plain_images_follow_the_rule(tmp_path, name, save, want):
    p = tmp_path / name
    Image.fromarray(_rgb()).save(p, **save)
    src = open_source(p)
    assert isinstance(src, ImageSource)
    if want is None:
        assert src.mpp is None and src.metadata["physical_units"] is False
        with pytest.raises(SlideError, match=name):
            src.glimpse(torch.zeros(1, 2), UM, units="um")
    else:
        assert src.mpp == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("res, unit, want", [
    ((72, 72), "INCH", None),
    ((28.3465, 28.3465), "CENTIMETER", None),
    ((40000, 40000), "CENTIMETER", 0.25),
    ((40000, 40000), "NONE", None),  # a unitless resolution is no size, however fine
])
def test_stripped_tiff_resolution_unit(tmp_path, res, unit, want):
    p = tmp_path / "stripped.tif"
    tifffile.imwrite(p, _rgb(), resolution=res, resolutionunit=unit)
    src = open_source(p)
    assert isinstance(src, ImageSource)
    assert (src.mpp is None) if want is None else src.mpp == pytest.approx(want, rel=1e-4)


@needs_shared
def test_convert_boxes_writes_pixels_not_placeholder_micrometres(tmp_path):
    dst = tmp_path / "boxes.ome.zarr"
    info = convert_to_ome_zarr(SLIDES / "boxes.tiff", dst, chunk=64, workers=1)
    assert info["mpp"] is None and info["physical_units"] is False
    assert "placeholder" in info["mpp_note"]
    attrs = json.loads((dst / "zarr.json").read_text())["attributes"]
    ms = attrs["ome"]["multiscales"][0]
    assert all("unit" not in a for a in ms["axes"])
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[1.0, 2.0**i, 2.0**i] for i in range(4)]  # pixels
    assert attrs["ram_wsi"]["mpp"] is None and attrs["ram_wsi"]["physical_units"] is False
    assert "placeholder" in attrs["ram_wsi"]["mpp_note"]
    z = ZarrSource(dst)
    assert z.mpp is None and z.metadata["mpp_note"] is None  # a store in pixels states none
    # small.svs states a microscope's size: it is kept, in micrometres.
    info = convert_to_ome_zarr(SLIDES / "small.svs", tmp_path / "s.ome.zarr", chunk=8)
    assert info["mpp"] == pytest.approx(0.499, abs=1e-3) and info["physical_units"] is True
    assert ZarrSource(tmp_path / "s.ome.zarr").mpp == pytest.approx(0.499, abs=1e-3)


def test_zarr_store_with_placeholder_micrometres(tmp_path):
    """A store written by an earlier convert of a 72-dpi file says 352.78 micrometres: the
    zarr reader applies the same rule."""
    import zarr

    p = tmp_path / "old.ome.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.create_array("0", shape=(3, 16, 16), chunks=(3, 16, 16), dtype="uint8", fill_value=255)
    g.attrs.update(ngff_attributes(1, 352.7777))
    src = open_source(p)
    assert src.mpp is None and "placeholder" in src.metadata["mpp_note"]
    g.attrs.update(ngff_attributes(1, 0.25))
    assert open_source(p).mpp == pytest.approx(0.25)
