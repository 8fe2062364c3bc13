"""Scoring and training from object storage (issue 24 §2-4) against moto's S3 server on
127.0.0.1: ``ram-wsi score s3://bucket/prefix/`` on Ray actors gives the local copies'
predictions; Ray rollout actors read remote slides; a server that goes away mid-run costs error
rows only, and the same command finishes the run once it is back; bad stores each get a row
naming the URI and the cause; and no credential is written anywhere (metadata, results, logs,
checkpoints)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytest.importorskip("moto")
ray = pytest.importorskip("ray")

from ram_wsi.bench.servers import MotoServer, environment, upload_tree
from ram_wsi.errors import DataError
from ram_wsi.score.runner import RunOptions, exit_status, score_slides
from ram_wsi.score.scorer import ScorerOptions, SlideScorer
from ram_wsi.slide import convert_to_ome_zarr
from ram_wsi.slide import remote as rm

BUCKET = "scores"
# Credentials moto accepts, unlike any text a run writes on its own: found anywhere under a
# run's outputs or in its logs, they leaked.
KEY_ID, SECRET = "AKIAREMOTETESTKEY7F3A", "s3cr3t-never-written-91b2c4"
ENV = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
       "AWS_DEFAULT_REGION": "us-east-1"}
COMPARED = ("slide_id", "status", "predicted", "predicted_mean_policy", "prob_dots",
            "prob_stripes", "pixels_read", "bytes_read", "pixels_decision", "width", "height",
            "levels", "mpp", "backend")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3():
    with environment(ENV), MotoServer() as srv:
        srv.client().create_bucket(Bucket=BUCKET)
        yield srv


@pytest.fixture(scope="module")
def ray_instance(s3):
    """A local Ray instance started after the credentials are in the environment (its workers
    inherit them, as a cluster's nodes have their own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def options(s3):
    rm.set_storage_options(_options(s3))
    yield
    rm.set_storage_options(None)


def _options(s3) -> dict:
    return {"endpoint_url": s3.endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}


@pytest.fixture(scope="module")
def cohort(slide_checkpoint, s3, tmp_path_factory):
    """Three generated OME-Zarr slides (two chunked as the writer makes them, one converted
    sharded) and a note, in a local folder and under ``s3://scores/cohort/``; the labels."""
    _, src = slide_checkpoint
    local = tmp_path_factory.mktemp("local_cohort")
    for name in ("test_002.zarr", "test_003.zarr"):
        shutil.copytree(src / name, local / name)
        shutil.copy2(src / f"{name}.json", local / f"{name}.json")
    convert_to_ome_zarr(src / "test_000.tiff", local / "test_000.zarr", chunk=256, shard=1024,
                        workers=1)
    (local / "notes.txt").write_text("not a slide\n")
    upload_tree(s3.client(), local, BUCKET, "cohort")
    with open(src / "manifest.csv", newline="") as fh:
        labels = {Path(r["path"]).stem: r["label"] for r in csv.DictReader(fh)}
    return local, f"s3://{BUCKET}/cohort/", labels


@pytest.fixture(scope="module")
def local_scored(slide_checkpoint, cohort, tmp_path_factory):
    ckpt, _ = slide_checkpoint
    out = tmp_path_factory.mktemp("scored_local")
    score_slides(cohort[0], ckpt, out, run_options=RunOptions(workers=0, progress=False),
                 log=lambda *_: None)
    return _rows(out)


def _rows(out) -> list[dict]:
    with open(Path(out) / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _same(a: list[dict], b: list[dict]) -> None:
    assert [{k: r[k] for k in COMPARED} for r in a] == [{k: r[k] for k in COMPARED} for r in b]


def _no_secret_under(folder: Path, *logs: str) -> None:
    """Neither credential in any file under ``folder`` (checkpoints, metadata, results,
    journal, GeoJSON ...) nor in the run's ``logs``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, p
    for text in logs:
        assert SECRET not in text and KEY_ID not in text


def test_score_s3_prefix_on_ray_equals_the_local_copies(slide_checkpoint, cohort, local_scored,
                                                        ray_instance, s3, tmp_path, capsys):
    ckpt, _ = slide_checkpoint
    _, prefix, _ = cohort
    logs: list[str] = []
    out = tmp_path / "out"
    rm.set_storage_options(None)  # the actors get the options from the scorer's
    summary = score_slides(prefix, ckpt, out, options=ScorerOptions(storage_options=_options(s3)),
                           run_options=RunOptions(workers=1, progress=False), log=logs.append)
    rows = _rows(out)
    assert exit_status(summary) == 0, [r["error"] for r in rows]
    assert [r["path"] for r in rows] == [f"{prefix}test_00{i}.zarr" for i in (0, 2, 3)]
    assert all("/" in r["worker"] for r in rows)  # scored in a Ray actor
    _same(rows, local_scored)
    assert summary["skipped"] == [f"{prefix}notes.txt"]
    # Resumable as a local run: the same command finds every row standing.
    again = score_slides(prefix, ckpt, out, options=ScorerOptions(storage_options=_options(s3)),
                         run_options=RunOptions(workers=1, progress=False), log=logs.append)
    assert exit_status(again) == 0
    assert [r["seconds"] for r in _rows(out)] == [r["seconds"] for r in rows]  # kept
    captured = capsys.readouterr()
    _no_secret_under(out, *logs, captured.out, captured.err)


def test_ray_rollout_actor_reads_remote_slides(cohort, ray_instance, s3, tmp_path):
    from ram_wsi.config import load_config
    from ram_wsi.distributed.actors import RolloutWorker
    from ram_wsi.distributed.runner import actor_config

    _, prefix, labels = cohort
    rows = ["path,label,split"] + [f"{prefix}{n}.zarr,{labels[n]},train"
                                   for n in ("test_000", "test_002", "test_003")]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    rm.set_storage_options(None)  # the actor takes them from the config
    cfg = load_config(None, ["data.source=slides", f"data.manifest={tmp_path}/m.csv",
                             f"data.slides.storage_options.endpoint_url={s3.endpoint}",
                             "distributed.episodes_per_call=4", "model.glimpses=2",
                             "model.patch=16", "model.scales=2"])
    actor = ray.remote(RolloutWorker).remote(actor_config(cfg), 0, 1)
    batch = ray.get(actor.rollout.remote(None, 0), timeout=120)
    assert tuple(batch.glimpses.shape[:3]) == (4, 2, 2)
    assert batch.float_glimpses().min() < 0.9  # tissue, not white: the slides were read
    ray.kill(actor)


def test_training_from_s3_writes_no_credential(cohort, s3, tmp_path, capsys):
    from ram_wsi.cli import main

    _, prefix, labels = cohort
    rows = ["path,label,split"]
    for n, split in (("test_002", "train"), ("test_003", "train"), ("test_000", "test")):
        rows.append(f"{prefix}{n}.zarr,{labels[n]},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(
        "data:\n  source: slides\n  slides:\n    manifest: " + str(tmp_path / "m.csv") + "\n"
        "    storage_options:\n      endpoint_url: " + s3.endpoint + "\n"
        "model: {glimpses: 2, patch: 16, scales: 2, hidden: 32, glimpse_hidden: 16, "
        "loc_hidden: 16, glimpse_out: 32}\n"
        "train: {batch_size: 4, epochs: 1, steps_per_epoch: 2, eval_samples: 1, threads: 1, "
        "progress: false}\n")
    rm.set_storage_options(None)  # `ram-wsi train` takes them from the config
    out = tmp_path / "run"
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--out-dir", str(out)]) == 0
    assert (out / "last.pt").is_file()
    captured = capsys.readouterr()
    _no_secret_under(out, captured.out, captured.err)


def test_server_going_away_mid_run_costs_rows_only_and_the_rerun_finishes(
        slide_checkpoint, cohort, local_scored, s3, tmp_path):
    ckpt, _ = slide_checkpoint
    _, prefix, _ = cohort

    class StopsTheServer(SlideScorer):
        """Scores one slide, then the server goes away (as a network fault would)."""

        def score(self, inp, worker=None):
            out = super().score(inp, worker)
            s3.stop()
            return out

    out = tmp_path / "out"
    opts = RunOptions(workers=0, progress=False)
    try:
        first = score_slides(prefix, ckpt, out, run_options=opts, scorer_cls=StopsTheServer,
                             log=lambda *_: None)
    finally:
        if s3._server is None:
            s3.start()  # the same port: the store is back
    rows = _rows(out)
    assert exit_status(first) == 1 and [r["status"] for r in rows] == ["ok", "error", "error"]
    for r in rows[1:]:
        assert r["error"].startswith(r["path"]) and rm.UNREACHABLE in r["error"]
    again = score_slides(prefix, ckpt, out, run_options=opts, log=lambda *_: None)
    assert exit_status(again) == 0
    _same(_rows(out), local_scored)


def test_bad_stores_get_rows_naming_the_uri_and_cause(slide_checkpoint, cohort, s3, tmp_path):
    import zarr

    ckpt, _ = slide_checkpoint
    local, _, _ = cohort
    bad = tmp_path / "bad"
    shutil.copytree(local / "test_000.zarr", bad / "truncated.zarr")
    shard = next(p for p in sorted((bad / "truncated.zarr" / "0").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    shard.write_bytes(shard.read_bytes()[:1000])
    zarr.open_group(str(bad / "plain_group.zarr"), mode="w", zarr_format=3)
    (bad / "slide.svs").write_bytes(b"II*\0 not really")
    (bad / "x.zarr").mkdir()
    (bad / "x.zarr" / "junk.bin").write_bytes(b"junk")
    (bad / "readme.md").write_text("hello\n")
    upload_tree(s3.client(), bad, BUCKET, "faulty")
    prefix = f"s3://{BUCKET}/faulty/"
    summary = score_slides(prefix, ckpt, tmp_path / "out", log=lambda *_: None,
                           run_options=RunOptions(workers=0, progress=False))
    rows = {r["path"]: r for r in _rows(tmp_path / "out")}
    why = {"plain_group.zarr": "multiscales", "slide.svs": "ram-wsi convert",
           "truncated.zarr": "shard", "x.zarr": "not a zarr store"}
    assert set(rows) == {prefix + n for n in why}
    for name, text in why.items():
        r = rows[prefix + name]
        assert r["status"] == "error" and r["error"].startswith(prefix + name), r["error"]
        assert text in r["error"], r["error"]
    assert summary["skipped"] == [prefix + "readme.md"]
    with pytest.raises(DataError, match="no-such-bucket"):
        score_slides("s3://no-such-bucket/cohort/", ckpt, tmp_path / "out2",
                     run_options=RunOptions(workers=0, progress=False), log=lambda *_: None)


def test_score_command_line_refuses_a_credential_and_a_remote_out(slide_checkpoint, cohort,
                                                                   tmp_path, capsys):
    from ram_wsi.cli import main

    ckpt, _ = slide_checkpoint
    _, prefix, _ = cohort
    assert main(["score", prefix, "-k", str(ckpt), "-o", str(tmp_path / "o"), "--workers", "0",
                 "--storage-option", f"secret={SECRET}"]) == 2
    assert main(["score", prefix, "-k", str(ckpt), "-o", f"s3://{BUCKET}/out", "--workers",
                 "0"]) == 2
    err = capsys.readouterr().err
    assert "credential" in err and "local" in err
    assert not (tmp_path / "o").exists()
