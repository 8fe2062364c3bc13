"""Slides on object storage (issue 24): OME-Zarr stores read from a real S3-protocol server
(moto's, on 127.0.0.1) and a plain read-only ``http.server`` give the same glimpses as their
local copies, to the bit; a glimpse's chunks (every scale, every location) are fetched in one
batch (two with shard indexes); every fault is a SlideError naming the URI and the cause; and
``ram-wsi convert`` writes to a URI. No client is mocked: s3fs and aiohttp speak to the servers
over sockets (the batches are counted by wrapping the store's method, which still runs)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.config import load_config
from ram_wsi.errors import ConfigError, SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import clear_caches, convert_to_ome_zarr, open_source
from ram_wsi.slide import remote as rm
from ram_wsi.slide.synth import write_pyramid_tiff, write_pyramid_zarr

pytest.importorskip("moto")
from ram_wsi.bench.servers import (
    DelayProxy,
    MotoServer,
    environment,
    http_server,
    moto_env,
    upload_tree,
)

BUCKET = "slides"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"


def _image(h: int = 420, w: int = 540, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 150 + 60 * np.sin(xx / 19.0) * np.cos(yy / 27.0)
    img = np.stack([base + 20 * k for k in range(3)], -1) + rng.normal(0, 8, (h, w, 3))
    img = np.clip(img, 0, 254).astype(np.uint8)
    img[:128, :128] = 255  # white chunks: not stored, read as fill
    return img


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback with credentials in the environment (restored after)."""
    with environment(moto_env()), MotoServer() as srv:
        srv.client().create_bucket(Bucket=BUCKET)
        yield srv


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory):
    """A chunked and a sharded store (local), the same uploaded: ``{name: (path, s3 uri)}``,
    and the folder they are in."""
    d = tmp_path_factory.mktemp("stores")
    img = _image()
    plain = write_pyramid_zarr(d / "plain.zarr", img, levels=3, chunk=64, mpp=0.5)
    convert_to_ome_zarr(plain, d / "sharded.zarr", chunk=64, shard=256, workers=1)
    out = {}
    for name in ("plain.zarr", "sharded.zarr"):
        upload_tree(s3.client(), d / name, BUCKET, f"cohort/{name}")
        out[name] = (d / name, f"s3://{BUCKET}/cohort/{name}")
    return out, d


@pytest.fixture(autouse=True)
def options(s3):
    """The server's endpoint as this process's storage options; one attempt per request
    (botocore would retry a dead server for seconds); cold caches around every test."""
    rm.set_storage_options({"endpoint_url": s3.endpoint,
                            "config_kwargs": {"retries": {"max_attempts": 1}}})
    clear_caches()
    yield
    rm.set_storage_options(None)
    clear_caches()


def _locs(n: int = 24, seed: int = 0, lim: float = 1.1) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).uniform(-lim, lim, (n, 2)),
                        dtype=torch.float32)


SPECS = [RetinaSpec(16, 3, 2.0, 1.0), RetinaSpec(12, 3, 3.0, 1.37), RetinaSpec(32, 2, 4.0, 1.0)]


@pytest.mark.parametrize("name", ["plain.zarr", "sharded.zarr"])
def test_s3_store_serves_the_local_glimpses_bit_for_bit(stores, name):
    path, uri = stores[0][name]
    local, remote = open_source(path), open_source(uri)
    assert remote.backend == "zarr" and remote.path == uri
    assert remote.metadata["level_dimensions"] == local.metadata["level_dimensions"]
    assert remote.mpp == local.mpp == 0.5
    for spec in SPECS:
        loc = _locs()
        assert torch.equal(remote.glimpse(loc, spec), local.glimpse(loc, spec))
        assert torch.equal(remote.glimpse(loc, spec, units="um"),
                           local.glimpse(loc, spec, units="um"))
    assert np.array_equal(remote.thumbnail(100), local.thumbnail(100))
    # Cold, both count the same reads: what "pixels read" means does not depend on the store.
    clear_caches()
    a, b = open_source(path), open_source(uri)
    a.glimpse(_locs(seed=5), SPECS[0])
    b.glimpse(_locs(seed=5), SPECS[0])
    assert a.counters == b.counters


def test_http_server_serves_the_same_glimpses(stores):
    found, folder = stores
    with http_server(folder) as base:
        for name in ("plain.zarr", "sharded.zarr"):
            path, _ = found[name]
            remote = open_source(f"{base}/{name}")
            loc = _locs(seed=7)
            assert torch.equal(remote.glimpse(loc, SPECS[1]),
                               open_source(path).glimpse(loc, SPECS[1]))
        with pytest.raises(SlideError) as e:
            open_source(f"{base}/missing.zarr")
        assert f"{base}/missing.zarr" in str(e.value) and "not found" in e.value.cause
        found_http, unclaimed = rm.scan_prefix(base + "/")
        assert unclaimed == []
        assert [u for u, _ in found_http] == [f"{base}/plain.zarr", f"{base}/sharded.zarr"]


class _Batches:
    """Counts the store's batches of requests (the real method still runs)."""

    def __init__(self, monkeypatch):
        self.calls: list[int] = []
        real = rm.RemoteStore.get_many

        def counted(store, requests):
            self.calls.append(len(requests))
            return real(store, requests)

        monkeypatch.setattr(rm.RemoteStore, "get_many", counted)


def test_a_glimpse_fetches_all_its_scales_and_locations_in_one_batch(stores, monkeypatch):
    batches = _Batches(monkeypatch)
    spec = SPECS[0]
    for name, cold_batches in (("plain.zarr", 1), ("sharded.zarr", 2)):
        clear_caches()
        batches.calls.clear()
        src = open_source(stores[0][name][1])
        assert len(batches.calls) == 1  # every level's metadata together (root: with its stamp)
        batches.calls.clear()
        one = src.glimpse(_locs(1, seed=11, lim=0.5), spec)  # one glimpse, 3 scales
        assert len(batches.calls) == cold_batches, (name, batches.calls)
        assert batches.calls[-1] >= spec.scales  # the scales' chunks in one batch
        batches.calls.clear()
        assert torch.equal(src.glimpse(_locs(1, seed=11, lim=0.5), spec), one)
        assert batches.calls == []  # warm: the cache, no request
        # M rollouts' glimpses (a batch of locations): still one batch of chunks, plus the
        # shard indexes not seen yet
        src.glimpse(_locs(10, seed=12), spec)
        assert 1 <= len(batches.calls) <= cold_batches
        batches.calls.clear()
        src.thumbnail(64)  # a whole coarse level: one batch too
        assert len(batches.calls) <= cold_batches


def test_one_glimpse_costs_at_most_two_round_trips_through_a_delay(stores):
    """Through a proxy that holds every request 50 ms: the glimpse's requests were sent
    together -- the proxy held no more than the chunks and shard indexes, and they went out
    in at most two waves (counted by the proxy, not timed)."""
    found, folder = stores
    with http_server(folder) as base:
        port = int(base.rsplit(":", 1)[1])
        with DelayProxy(port, 0.05) as proxy:
            src = open_source(f"{proxy.endpoint}/sharded.zarr")
            waves: list[int] = []
            real = rm.RemoteStore.get_many

            def counted(store, requests):
                before = proxy.requests
                out = real(store, requests)
                waves.append(proxy.requests - before)
                return out

            rm.RemoteStore.get_many = counted
            try:
                g = src.glimpse(_locs(1, seed=2, lim=0.4), SPECS[0])
            finally:
                rm.RemoteStore.get_many = real
            assert len(waves) <= 2 and sum(waves) >= SPECS[0].scales
            assert torch.equal(g, open_source(found["sharded.zarr"][0]).glimpse(
                _locs(1, seed=2, lim=0.4), SPECS[0]))


def test_remote_source_pickles_as_its_uri_and_options(stores, s3):
    uri = stores[0]["plain.zarr"][1]
    src = open_source(uri, storage_options={"endpoint_url": s3.endpoint})
    rm.set_storage_options(None)  # the copy must use the options it travelled with
    copy = pickle.loads(pickle.dumps(src))
    assert copy.path == uri and copy.settings == {"storage_options": {"endpoint_url":
                                                                      s3.endpoint}}
    loc = _locs(seed=3)
    assert torch.equal(copy.glimpse(loc, SPECS[0]),
                       open_source(stores[0]["plain.zarr"][0]).glimpse(loc, SPECS[0]))


# ----------------------------------------------------------------------------- faults
def test_missing_bucket_key_and_not_ome_zarr_name_the_uri_and_cause(stores, s3, tmp_path):
    cases = {f"s3://no-such-bucket/{'x'}.zarr": "no such bucket 'no-such-bucket'",
             f"s3://{BUCKET}/cohort/absent.zarr": "not found"}
    # A zarr group without multiscales, and a prefix of objects without any zarr.json.
    import zarr

    zarr.open_group(str(tmp_path / "plain_group.zarr"), mode="w", zarr_format=3)
    upload_tree(s3.client(), tmp_path / "plain_group.zarr", BUCKET, "odd/plain_group.zarr")
    s3.client().put_object(Bucket=BUCKET, Key="odd/objects/readme.txt", Body=b"hello")
    cases[f"s3://{BUCKET}/odd/plain_group.zarr"] = "no OME-NGFF 'multiscales'"
    cases[f"s3://{BUCKET}/odd/objects"] = "not a zarr store"
    cases[f"s3://{BUCKET}/cohort/slide.svs"] = "ram-wsi convert SLIDE s3://slides/cohort/slide"
    for uri, why in cases.items():
        with pytest.raises(SlideError) as e:
            open_source(uri)
        assert str(e.value).startswith(uri) and why in e.value.cause, (uri, str(e.value))


def test_truncated_shard_is_an_error_naming_the_shard(stores, s3, tmp_path):
    path, _ = stores[0]["sharded.zarr"]
    broken = tmp_path / "trunc.zarr"
    shutil.copytree(path, broken)
    shard = broken / "0" / "c" / "0" / "1" / "1"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    upload_tree(s3.client(), broken, BUCKET, "broken/trunc.zarr")
    src = open_source(f"s3://{BUCKET}/broken/trunc.zarr")
    loc = torch.tensor([[-1 + 2 * 384 / 540, -1 + 2 * 384 / 420]])  # inside shard (1, 1)
    with pytest.raises(SlideError) as e:
        src.glimpse(loc, RetinaSpec(16, 1, 2.0, 1.0))
    assert str(e.value).startswith(f"s3://{BUCKET}/broken/trunc.zarr")
    assert "0/c/0/1/1" in e.value.cause and "shard" in e.value.cause
    assert "truncated" in e.value.cause or "checksum" in e.value.cause


def test_no_credentials_and_access_denied_say_so(stores, s3, monkeypatch, tmp_path):
    uri = stores[0]["plain.zarr"][1]
    with monkeypatch.context() as m:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            m.delenv(k, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(SlideError) as e:
            open_source(uri)
        assert str(e.value).startswith(uri) and "no credentials" in e.value.cause
    # A user whose policy allows another bucket only, with the server checking signatures.
    import boto3
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="other-bucket", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                 "Resource": "arn:aws:s3:::other/*"}]}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with enable_iam_authentication(), pytest.raises(SlideError) as e:
        open_source(uri)
    assert str(e.value).startswith(uri) and "access denied" in e.value.cause
    assert key["SecretAccessKey"] not in str(e.value)


def test_server_going_away_is_an_unreachable_error_and_reading_resumes(stores, s3):
    path, uri = stores[0]["sharded.zarr"]
    src = open_source(uri)
    loc = _locs(seed=21)
    s3.stop()
    try:
        with pytest.raises(SlideError) as e:
            src.glimpse(loc, SPECS[0])
        assert str(e.value).startswith(uri) and rm.UNREACHABLE in e.value.cause
        assert rm.is_transient(str(e.value))
        with pytest.raises(SlideError) as e:
            open_source(stores[0]["plain.zarr"][1])
        assert rm.UNREACHABLE in e.value.cause
    finally:
        s3.start()  # the same port; moto's buckets outlive its server
    assert torch.equal(src.glimpse(loc, SPECS[0]), open_source(path).glimpse(loc, SPECS[0]))


# ----------------------------------------------------------------------------- convert
def test_convert_writes_to_s3_the_store_it_writes_locally(s3, tmp_path):
    from ram_wsi.slide.convert import cli

    tiff = write_pyramid_tiff(tmp_path / "s.tiff", _image(300, 420, seed=9), levels=2,
                              tile=64, compression="none", mpp=0.25)
    convert_to_ome_zarr(tiff, tmp_path / "s.zarr", chunk=64, shard=128, workers=1)
    uri = f"s3://{BUCKET}/converted/s.zarr"
    for _ in range(2):  # a second run replaces the store
        assert cli([str(tiff), uri, "--chunk", "64", "--shard", "128", "--workers", "2",
                    "--storage-option", f"endpoint_url={s3.endpoint}"]) == 0
    remote, local = open_source(uri), open_source(tmp_path / "s.zarr")
    assert remote.level_dimensions == local.level_dimensions and remote.mpp == 0.25
    for spec in SPECS:
        loc = _locs(seed=13)
        assert torch.equal(remote.glimpse(loc, spec), local.glimpse(loc, spec))
    # an interrupted conversion (a source whose pixels fail) leaves no image behind
    bad = f"s3://{BUCKET}/converted/unreadable.zarr"
    with pytest.raises(SlideError):
        convert_to_ome_zarr(SHARED / "unreadable.svs", bad, chunk=64, workers=1)
    with pytest.raises(SlideError) as e:
        open_source(bad)
    assert "multiscales" in e.value.cause or "not found" in e.value.cause
    # credentials on the command line are refused before anything is written
    assert cli([str(tiff), f"s3://{BUCKET}/converted/t.zarr", "--storage-option",
                "secret=abc"]) == 2


# ----------------------------------------------------------------------------- options
def test_storage_options_refuse_credentials_and_resolve_per_scheme():
    ok = rm.check_storage_options({"endpoint_url": "http://127.0.0.1:9000", "anon": True,
                                   "client_kwargs": {"region_name": "eu-west-1"},
                                   "token": "anon"})
    assert ok["anon"] is True
    for bad in ({"key": "AKIA"}, {"secret": "x"}, {"s3": {"token": "abc"}},
                {"client_kwargs": {"aws_secret_access_key": "x"}},
                {"endpoint_url": "https://user:pw@host"}, {"https": {"headers": {
                    "Authorization": "Bearer x"}}}):
        with pytest.raises(ValueError, match="credential|password"):
            rm.check_storage_options(bad)
    opts = {"endpoint_url": "http://e", "s3": {"anon": True}, "https": {"block_size": 0}}
    s3o = rm.options_for("s3://b/x.zarr", opts)
    assert s3o["endpoint_url"] == "http://e" and s3o["anon"] is True
    assert s3o["max_concurrency"] == 1 and s3o["config_kwargs"]["max_pool_connections"] >= 10
    assert rm.options_for("https://h/x.zarr", opts) == {"block_size": 0}  # no endpoint_url
    assert rm.parse_storage_options(["anon=true", "config_kwargs.connect_timeout=5",
                                     "s3.endpoint_url=http://e"]) == {
        "anon": True, "config_kwargs": {"connect_timeout": 5}, "s3": {"endpoint_url": "http://e"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        rm.parse_storage_options(["anon"])
    base = ["data.source=slides", "data.manifest=m.csv"]
    cfg = load_config(None, [*base, "data.slides.storage_options.anon=true"])
    assert cfg.data.slides.storage_options == {"anon": True}
    with pytest.raises(ConfigError, match="storage_options.*credential"):
        load_config(None, [*base, "data.slides.storage_options.secret=abc"])
    with pytest.raises(SlideError, match="user or password"):
        open_source("s3://me:pw@bucket/x.zarr")


def test_neighbouring_ranges_of_one_shard_are_fetched_as_one_request():
    """A glimpse's inner chunks lie side by side in a shard: one request, each chunk's bytes
    cut from it at its own offsets; far ranges, other shards and whole objects stay apart."""
    from ram_wsi.slide._zarr_decode import COALESCE_GAP, coalesce

    items = [("s/0", 100, 50), ("s/0", 0, 100), ("s/0", 150 + COALESCE_GAP + 1, 10),
             ("s/1", 0, 10), ("c/0", -1, -1)]
    reqs, spans = coalesce(items)
    assert sorted(reqs, key=str) == sorted([("s/0", 0, 150), ("s/0", 151 + COALESCE_GAP, 161
                                            + COALESCE_GAP), ("s/1", 0, 10),
                                            ("c/0", None, None)], key=str)
    blob = {k: bytes(range(256)) * 1024 for k in ("s/0", "s/1")}
    for (key, off, nb), (r, lo, hi) in zip(items, spans):
        rkey, start, end = reqs[r]
        assert rkey == key
        if off < 0:
            assert start is None and (lo, hi) == (0, -1)
            continue
        answer = blob[key][start:end]
        assert answer[lo:hi] == blob[key][off:off + nb]


def test_remote_benchmark_writes_its_rows(tmp_path):
    """``ram-wsi bench remote`` end to end on a tiny store: every (layout, store) row at each
    delay, the same predictions scored from the server as from local disk."""
    from ram_wsi.bench import main

    out = tmp_path / "out"
    assert main(["remote", "--size", "1024", "--slides", "1", "--rounds", "1", "--trials", "2",
                 "--steps", "2", "--layouts", "sharded", "--stores", "s3", "--delays", "0", "5",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "remote.jsonl").read_text().splitlines()]
    kinds = {(r["kind"], r["store"], r["delay_ms"]) for r in rows}
    assert {("glimpses", "local", 0.0), ("glimpses", "s3", 0.0), ("glimpses", "s3", 5.0),
            ("latency", "s3", 5.0), ("score", "s3", 5.0)} <= kinds
    assert [r["same_predictions"] for r in rows if r["kind"] == "score"] == [None, True, True]
    lat = next(r for r in rows if r["kind"] == "latency" and r["delay_ms"] == 5.0)
    assert lat["batches"] == 2 and lat["round_trips"] is not None
