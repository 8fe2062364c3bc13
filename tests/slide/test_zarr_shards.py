"""OME-Zarr stores with the zarr v3 ``sharding_indexed`` codec: the fast chunk reader (shard
index parsed once per shard, one ``pread`` per inner chunk) reads exactly what zarr reads,
absent inner chunks and absent shard files read as the fill value, and broken shards raise
SlideError naming the shard file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import ZarrSource, _zarr_decode, open_source
from ram_wsi.slide.ngff import ngff_attributes
from ram_wsi.slide.synth import pyramid_images

# Ragged on purpose: neither multiple of the shard (256) nor of the chunk (64).
H, W = 700, 1000
CHUNK, SHARD = 64, 256
MAX = 2**64 - 1


def _image() -> np.ndarray:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 140 + 50 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    img = np.stack([base + 15 * k for k in range(3)], axis=-1)
    img = img + rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 254).astype(np.uint8)
    # A whole shard of white (shard (0, 1) of level 0: y 0..255, x 256..511): no shard file.
    img[0:256, 256:512] = 255
    # One inner chunk of white inside a written shard (shard (1, 1), inner (1, 2)): absent
    # from the shard index.
    img[320:384, 384:448] = 255
    return img


def _write(path: Path, img: np.ndarray, *, shards: bool, index_location: str = "end",
           levels: int = 2) -> Path:
    import zarr
    from zarr.codecs import BloscCodec

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    for i, lv in enumerate(pyramid_images(img, levels)):
        kw: dict = {}
        if shards:
            kw["shards"] = (3, SHARD, SHARD)
        a = g.create_array(
            str(i), shape=(3, lv.shape[0], lv.shape[1]), chunks=(3, CHUNK, CHUNK),
            dtype="uint8", compressors=BloscCodec(cname="lz4hc", clevel=5, shuffle="shuffle"),
            fill_value=255, dimension_names=["c", "y", "x"], **kw)
        if shards and index_location != "end":
            # zarr.create_array has no index_location argument: rewrite the codec's metadata
            # before any data is written.
            import json

            zj = path / str(i) / "zarr.json"
            meta = json.loads(zj.read_text())
            meta["codecs"][0]["configuration"]["index_location"] = index_location
            zj.write_text(json.dumps(meta))
            a = zarr.open_array(str(path / str(i)), mode="r+")
        a[:] = lv.transpose(2, 0, 1)
    g.attrs.update(ngff_attributes(levels, 0.5, name=path.stem))
    return path


def _index(shard_file: Path, n: int, location: str) -> np.ndarray:
    """The shard's (offset, nbytes) table, parsed independently of the code under test."""
    raw = shard_file.read_bytes()
    isz = 16 * n + 4
    buf = raw[:isz] if location == "start" else raw[-isz:]
    return np.frombuffer(buf[:-4], dtype="<u8").reshape(-1, 2)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    img = _image()
    return img, {
        "end": _write(d / "sharded_end.zarr", img, shards=True),
        "start": _write(d / "sharded_start.zarr", img, shards=True, index_location="start"),
        "plain": _write(d / "plain.zarr", img, shards=False),
    }


def _zarr_block(path: Path, level: int, bx: int, by: int) -> np.ndarray:
    import zarr

    a = zarr.open_array(str(path / str(level)), mode="r")
    _, lh, lw = a.shape
    out = np.full((3, CHUNK, CHUNK), 255, dtype=np.uint8)
    y0, x0 = by * CHUNK, bx * CHUNK
    h, w = min(CHUNK, lh - y0), min(CHUNK, lw - x0)
    out[:, :h, :w] = np.asarray(a[:, y0:y0 + h, x0:x0 + w])
    return out


@pytest.mark.parametrize("loc", ["end", "start"])
def test_store_has_absent_shard_and_absent_inner_chunk(stores, loc):
    _, paths = stores
    p = paths[loc]
    assert not (p / "0" / "c" / "0" / "0" / "1").exists()  # the white shard
    f = p / "0" / "c" / "0" / "1" / "1"
    assert f.exists()
    idx = _index(f, (SHARD // CHUNK) ** 2, loc).reshape(SHARD // CHUNK, SHARD // CHUNK, 2)
    assert tuple(idx[1, 2]) == (MAX, MAX)
    assert (idx[0, 0] != MAX).all()
    # ragged edge: the last shard column of level 0 exists and is shard-shaped in the grid
    assert (p / "0" / "c" / "0" / "2" / "3").exists()


@pytest.mark.parametrize("loc", ["end", "start"])
def test_fast_path_reads_exactly_what_zarr_reads(stores, loc, monkeypatch):
    import zarr

    _, paths = stores
    p = paths[loc]
    src = ZarrSource(p)
    with src._handle() as hd:
        fast = hd["fast"]
    assert all(f is not None and f.shard is not None for f in fast)
    assert fast[0].shard.loc == loc
    assert src.info.block_sizes == [(CHUNK, CHUNK)] * 2
    refs = {}
    for level, (lw, lh) in enumerate(src.info.level_dimensions):
        for by in range(-(-lh // CHUNK)):
            for bx in range(-(-lw // CHUNK)):
                refs[level, bx, by] = _zarr_block(p, level, bx, by)

    inner_calls = []
    real = _zarr_decode.read_inner

    def counting(*a, **k):
        inner_calls.append(a[1])
        return real(*a, **k)

    def no_zarr(*a, **k):
        raise AssertionError("fell back to zarr")

    monkeypatch.setattr(_zarr_decode, "read_inner", counting)
    monkeypatch.setattr(zarr.Array, "__getitem__", no_zarr)
    for (level, bx, by), ref in refs.items():
        got = src._read_block(level, bx, by)
        assert got.shape == (3, CHUNK, CHUNK) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref, err_msg=f"level {level} block ({by}, {bx})")
    assert len(inner_calls) == len(refs)
    # the white shard reads as fill; the absent inner chunk too
    assert (src._read_block(0, 4, 0) == 255).all()
    assert (src._read_block(0, 6, 5) == 255).all()
    # each existing shard's index was parsed once, however many inner chunks it holds
    files = {f for f in inner_calls if os.path.exists(f)}
    parsed = sum(f.shard.cache.misses for f in fast)
    assert parsed == len(files)


def test_glimpses_sharded_equal_unsharded(stores):
    _, paths = stores
    rng = np.random.default_rng(3)
    locs = torch.tensor(rng.uniform(-1.1, 1.1, (48, 2)), dtype=torch.float32)
    spec = RetinaSpec(16, 3, 2.0, 1.0)
    ref = open_source(paths["plain"]).glimpse(locs, spec)
    for loc in ("end", "start"):
        got = open_source(paths[loc]).glimpse(locs, spec)
        assert torch.equal(got, ref), loc


def test_unsupported_sharding_falls_back_to_zarr(tmp_path, stores):
    """Inner codecs the fast path does not know (here: a transpose) are read by zarr."""
    import zarr
    from zarr.codecs import BloscCodec

    img, paths = stores
    p = tmp_path / "odd.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    a = g.create_array("0", shape=(3, H, W), chunks=(3, CHUNK, CHUNK), shards=(3, SHARD, SHARD),
                       dtype="uint8", fill_value=255, filters=[zarr.codecs.TransposeCodec(
                           order=(0, 2, 1))], compressors=BloscCodec(cname="zstd"))
    a[:] = img.transpose(2, 0, 1)
    g.attrs.update(ngff_attributes(1, 0.5))
    src = ZarrSource(p)
    with src._handle() as hd:
        assert hd["fast"][0] is None
    np.testing.assert_array_equal(src._read_block(0, 15, 10), _zarr_block(paths["end"], 0, 15, 10))


def _copy(stores, tmp_path: Path, loc: str = "end") -> Path:
    _, paths = stores
    q = tmp_path / f"copy_{loc}.zarr"
    shutil.copytree(paths[loc], q)
    return q


@pytest.mark.parametrize("loc", ["end", "start"])
@pytest.mark.parametrize("keep", [0.5, 100])
def test_truncated_shard_raises_naming_the_file(stores, tmp_path, loc, keep):
    q = _copy(stores, tmp_path, loc)
    f = q / "0" / "c" / "0" / "1" / "1"
    raw = f.read_bytes()
    f.write_bytes(raw[: int(len(raw) * keep) if keep < 1 else keep])
    src = ZarrSource(q)
    with pytest.raises(SlideError) as ei:
        src._read_block(0, 4, 4)  # shard (1, 1), inner (0, 0)
    assert str(f) in str(ei.value) and str(q) in str(ei.value)
    assert "truncated" in str(ei.value) or "corrupt" in str(ei.value)
    # other shards still read
    np.testing.assert_array_equal(src._read_block(0, 0, 0), _zarr_block(stores[1]["end"], 0, 0, 0))


def test_corrupt_index_raises(stores, tmp_path):
    q = _copy(stores, tmp_path)
    f = q / "0" / "c" / "0" / "0" / "0"
    raw = bytearray(f.read_bytes())
    n = (SHARD // CHUNK) ** 2
    raw[-(16 * n + 4)] ^= 0xFF  # first offset of the index: the crc no longer matches
    f.write_bytes(bytes(raw))
    with pytest.raises(SlideError, match="0/c/0/0/0"):
        ZarrSource(q)._read_block(0, 0, 0)


def test_index_cache_follows_a_rewritten_shard(stores, tmp_path):
    q = _copy(stores, tmp_path)
    src = ZarrSource(q)
    before = src._read_block(0, 1, 1).copy()
    assert not (before == 255).all()
    # rewrite shard (0, 0) with another shard's bytes (same layout, other pixels)
    f, other = q / "0" / "c" / "0" / "0" / "0", q / "0" / "c" / "0" / "1" / "0"
    os.replace(other, f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = src._read_block(0, 1, 1)
    np.testing.assert_array_equal(after, _zarr_block(stores[1]["end"], 0, 1, 5))


def test_threads_under_index_cache_eviction(stores):
    from concurrent.futures import ThreadPoolExecutor

    _, paths = stores
    src = ZarrSource(paths["end"])
    with src._handle() as hd:
        for f in hd["fast"]:
            # room for one parsed index: every other read re-parses one
            f.shard.cache.resize(f.shard.index_size)
    lw, lh = src.info.level_dimensions[0]
    keys = [(bx, by) for by in range(-(-lh // CHUNK)) for bx in range(-(-lw // CHUNK))]
    refs = {k: _zarr_block(paths["end"], 0, *k) for k in keys}
    order = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))] * 3
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda k: src._read_block(0, *k), order))
    for k, g in zip(order, got):
        np.testing.assert_array_equal(g, refs[k])
