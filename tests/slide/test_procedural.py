"""ProceduralSource (slides drawn on demand from a ``procedural:`` URI) and the needle scene."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import (
    ProceduralSource,
    clear_caches,
    open_source,
    procedural_uri,
    write_synthetic_slide,
)
from ram_wsi.slide.procedural import parse_procedural_uri
from ram_wsi.slide.synth import NEEDLE_INK_FRACTION, make_scene
from ram_wsi.slide.synth.needle import pattern_table, pooled_table

SIZE = 4096
NEEDLE = {"kind": "needle", "seed": 5, "label": 1, "lesion_size": 512}
DIGIT = {"kind": "digit", "seed": 7, "label": 4}
SPECS = [RetinaSpec(16, 3, 4.0, 1.0), RetinaSpec(16, 3, 4.0, 2.0)]


def _uri(p: dict) -> str:
    p = dict(p)
    return procedural_uri(p.pop("kind"), SIZE, **p)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("procedural")
    out = {}
    for name, p in (("needle", NEEDLE), ("digit", DIGIT)):
        z = write_synthetic_slide(d / f"{name}.zarr", SIZE, fmt="zarr", **p)
        t = write_synthetic_slide(d / f"{name}.tiff", SIZE, fmt="tiff", compression="none", **p)
        out[name] = (d / f"{name}.zarr", d / f"{name}.tiff", z, t)
    return out


def _locations(meta: dict, n: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    far = rng.uniform(-1.05, 1.05, (n - 16, 2))  # tissue, background, borders
    near = np.asarray(meta["target_center_loc"]) + rng.normal(0, 0.08, (16, 2))
    return torch.from_numpy(np.concatenate([far, near]))


@pytest.mark.parametrize("name", ["needle", "digit"])
def test_same_pixels_as_the_written_slides(written, name):
    zpath, tpath, zmeta, tmeta = written[name]
    src = open_source(_uri(NEEDLE if name == "needle" else DIGIT))
    assert isinstance(src, ProceduralSource) and src.backend == "procedural"
    z, t = open_source(zpath), open_source(tpath)
    assert src.level_dimensions == z.level_dimensions == t.level_dimensions
    assert src.axis_downsamples == z.axis_downsamples
    assert src.level_downsamples == z.level_downsamples
    assert src.info.block_sizes == z.info.block_sizes
    assert src.mpp == z.mpp == pytest.approx(t.mpp) == pytest.approx(0.25)
    thumb = src.thumbnail(512)
    assert np.array_equal(thumb, z.thumbnail(512)) and np.array_equal(thumb, t.thumbnail(512))
    loc = _locations(zmeta)
    for spec in SPECS:
        g = src.glimpse(loc, spec)
        assert torch.equal(g, z.glimpse(loc, spec))
        assert torch.equal(g, t.glimpse(loc, spec))  # uncompressed TIFF through OpenSlide
    # The source's target is the sidecar, without the file's own entries.
    side = json.loads(zpath.with_name(zpath.name + ".json").read_text())
    for key in ("path", "fmt", "compression", "tiles"):
        side.pop(key)
    assert src.target == {"uri": src.path, **side}
    assert tmeta["target_center_px"] == zmeta["target_center_px"]


def test_needle_sidecar(written):
    _, _, meta, _ = written["needle"]
    assert meta["kind"] == "needle" and meta["class_names"] == ["dots", "stripes"]
    assert meta["label"] == 1 and meta["lesion_size_px"] == meta["target_size_px"] == 512
    assert meta["period_px"] == 8 and meta["stripe_angle_deg"] in (0, 45, 90, 135)
    cx, cy = meta["target_center_px"]
    assert meta["target_center_loc"] == pytest.approx([cx / SIZE * 2 - 1, cy / SIZE * 2 - 1])
    assert written["digit"][2]["kind"] == "digit"


def _anisotropy(gray: np.ndarray, period: int) -> float:
    """Largest share of the pattern's fundamental energy in one of the four directions."""
    n = gray.shape[0]
    k = n // period
    spec = np.abs(np.fft.fft2(gray - gray.mean())) ** 2
    e = np.array([spec[0, k], spec[k, 0], spec[k, k], spec[k, n - k]])
    return float(e.max() / e.sum())


def _pair(**kw):
    a = ProceduralSource(procedural_uri("needle", SIZE, seed=5, label=0, lesion_size=512, **kw))
    b = ProceduralSource(procedural_uri("needle", SIZE, seed=5, label=1, lesion_size=512, **kw))
    assert a.target["target_center_px"] == b.target["target_center_px"]  # same place
    return a, b


def test_needle_classes_differ_at_level_0_only():
    a, b = _pair()
    cx, cy = (int(v) for v in a.target["target_center_px"])
    # Level 0: dots are isotropic, stripes put all the energy in one direction.
    ra, rb = (s.read_region(0, cx - 32, cy - 32, 64, 64).astype(np.float64).mean(0)
              for s in (a, b))
    assert _anisotropy(ra, 8) < 0.6 and _anisotropy(rb, 8) > 0.95
    assert ra.std() > 10 and rb.std() > 10  # a pattern, not a flat colour
    spec = RetinaSpec(32, 1, 2.0, 1.0)
    loc = torch.tensor([a.target["target_center_loc"]])
    assert float((a.glimpse(loc, spec) - b.glimpse(loc, spec)).abs().mean()) > 0.05
    # Pooled over the period (level 3: downsample 8) the lesions have the same colour.
    half = int(0.3 * 512)  # inside the disk
    for level in (2, 3, 4):
        f = 2**level
        ma, mb = (s.read_region(level, (cx - half) // f, (cy - half) // f, 2 * half // f,
                                2 * half // f).reshape(3, -1).mean(1) for s in (a, b))
        assert np.abs(ma - mb).max() <= 2.0, (level, ma, mb)
    for s in (a, b):  # and it is flat there
        r = s.read_region(3, (cx - half) // 8, (cy - half) // 8, 2 * half // 8, 2 * half // 8)
        assert np.ptp(r.reshape(3, -1).astype(int), axis=1).max() <= 1


@pytest.mark.parametrize("label,angle", [(0, 0), (1, 0), (1, 45), (1, 90), (1, 135)])
@pytest.mark.parametrize("period", [8, 6, 16])
def test_pattern_tables_ink_the_same_fraction(label, angle, period):
    t = pattern_table(label, angle, period)
    assert t.shape == (period, period) and 0 <= t.min() and t.max() <= 1
    assert t.mean() == pytest.approx(NEEDLE_INK_FRACTION, abs=1e-9)
    assert pooled_table(t, period) == pytest.approx(np.full_like(t, NEEDLE_INK_FRACTION))
    if period == 8:
        tiled = np.tile(t, (8, 8))
        assert (_anisotropy(tiled, 8) > 0.95) == (label == 1)


def test_needle_lesion_on_a_thumbnail_of_a_gigapixel_slide():
    src = open_source(procedural_uri("needle", 131072, seed=3, label=0))
    meta = src.target
    assert src.level_count == 10 and meta["lesion_size_px"] == 1024
    thumb = src.thumbnail(512).astype(np.float64)
    assert thumb.shape == (512, 512, 3)
    # Only a coarse level was drawn (the whole level 0 is 2.6e5 tiles).
    assert src.counters["pixels_decoded"] <= 4 * 256 * 256
    cx, cy = (round(v / 256) for v in meta["target_center_px"])
    spot = thumb[cy, cx].mean()
    ring = np.concatenate([thumb[cy - 8, cx - 8:cx + 9], thumb[cy + 8, cx - 8:cx + 9],
                           thumb[cy - 8:cy + 9, cx - 8], thumb[cy - 8:cy + 9, cx + 8]])
    assert (ring.mean(1) < 245).all()  # the lesion lies inside tissue
    assert spot < ring.mean() - 50
    assert ((thumb.mean(2) < spot + 15).sum()) <= 40  # a spot of ~4 x 4 pixels, nothing else


def test_uri_round_trip_and_canonical_order():
    u = procedural_uri("needle", (4096, 2048), seed=3, label=1, period=16, mpp=None, tile=128)
    assert u == "procedural:needle?size=4096x2048&seed=3&label=1&tile=128&mpp=none&period=16"
    p = parse_procedural_uri(u)
    assert p == {"kind": "needle", "size": (4096, 2048), "seed": 3, "label": 1, "tile": 128,
                 "mpp": None, "lesion_size": 1024, "period": 16, "tissue_blobs": None}
    kind, size = p.pop("kind"), p.pop("size")
    assert procedural_uri(kind, size, **p) == u
    shuffled = "procedural:needle?period=16&mpp=none&tile=128&label=1&seed=3&size=4096x2048"
    assert parse_procedural_uri(shuffled) == parse_procedural_uri(u)
    # Defaults left out: equal slides, equal URIs.
    assert (procedural_uri("digit", 512, seed=0, tile=256, mpp=0.25, lesion_size=1024)
            == procedural_uri("digit", 512, seed=0) == "procedural:digit?size=512&seed=0")
    assert parse_procedural_uri("procedural:digit?size=512&mpp=0.5")["mpp"] == 0.5


@pytest.mark.parametrize("uri", [
    "procedural:nope?size=10",
    "procedural:needle?size=64&colour=red",
    "procedural:needle?size=abc",
    "procedural:needle?size=0",
    "procedural:needle?size=64x",
    "procedural:needle?size=64&tile=100",
    "procedural:needle?size=64&label=2",
    "procedural:digit?size=64&label=10",
    "procedural:needle?size=64&mpp=-1",
    "procedural:needle?size=64&mpp=fast",
    "procedural:needle?size=64&seed=-1",
    "procedural:needle?size=64&seed=1&seed=2",
    "procedural:needle?seed=1",
    "procedural:needle?size=64&period=0",
    "procedural:needle?size=64&target_size=5",      # a digit's key
    "procedural:digit?size=64&pool=test",           # a tissue slide's key
    "procedural:tissue?size=64&pool=somewhere",
])
def test_bad_uris_raise_slide_errors_naming_the_uri(uri):
    with pytest.raises(SlideError) as e:
        parse_procedural_uri(uri)
    assert e.value.path == uri and uri in str(e.value)
    with pytest.raises(SlideError):
        open_source(uri)


def test_open_source_dispatches_uris():
    with pytest.raises(SlideError, match="unknown procedural kind"):
        open_source("procedural:nope?size=10")
    with pytest.raises(SlideError, match="unsupported URI scheme"):
        open_source("dicomweb:studies/1.2.3")
    with pytest.raises(SlideError):
        procedural_uri("needle", 64, seed=0, colour="red")
    with pytest.raises(ValueError):
        write_synthetic_slide("unused.tiff", 64, kind="bogus")


def test_pickled_copy_serves_the_same_glimpse():
    src = open_source(procedural_uri("needle", SIZE, seed=9, label=1, lesion_size=512))
    loc = torch.tensor([src.target["target_center_loc"], [0.1, -0.2]])
    g = src.glimpse(loc, SPECS[0])
    copy = pickle.loads(pickle.dumps(src))
    assert copy.path == src.path and copy._scene_obj is None  # drawn lazily where used
    assert copy.mtime() == 0.0
    assert torch.equal(copy.glimpse(loc, SPECS[0]), g)


def test_counters_and_block_cache():
    clear_caches()
    src = open_source(procedural_uri("needle", SIZE, seed=11, label=0, lesion_size=512))
    loc = torch.tensor([src.target["target_center_loc"]])
    src.glimpse(loc, SPECS[0])
    cold = src.counters["blocks_decoded"]
    assert cold > 0 and src.counters["pixels_decoded"] >= cold * 256 * 256
    src.glimpse(loc, SPECS[0])
    assert src.counters["blocks_decoded"] == cold  # composed: block cache; others: shared
    # Another source of the same URI shares the process's block cache for composed tiles.
    other = open_source(src.path)
    other.glimpse(loc, SPECS[0])
    assert other.counters["blocks_decoded"] < cold or cold == 1


def test_tile_blocks_classify_as_the_whole_level():
    s = make_scene("needle", 3000, 1700, seed=2, label=None, tile=128, lesion_size=300)
    for level in range(s.levels()):
        full = s.classify(level)
        got = np.array([[s.tile_class(level, x, y)[0] for x in range(full.shape[1])]
                        for y in range(full.shape[0])])
        assert np.array_equal(got, full)
    # Every tile touching the lesion (and its soft edge) is composed.
    cls0 = s.classify(0)
    r = 150 + 1
    ys, xs = slice(int((s.ty - r) // 128), int((s.ty + r) // 128) + 1), \
        slice(int((s.tx - r) // 128), int((s.tx + r) // 128) + 1)
    assert (cls0[ys, xs] == 2).all()
