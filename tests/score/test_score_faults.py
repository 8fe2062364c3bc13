"""A reader that kills its process costs that slide, not the run; a slide that hangs is
stopped by the timeout; on a two-node Ray cluster the scorers spread over both nodes."""

import ctypes
import time

import pytest

from ram_wsi.score.runner import RunOptions, score_slides
from ram_wsi.score.scorer import SlideScorer


class FaultyScorer(SlideScorer):
    """A scorer whose reader segfaults on files named ``crash*`` and hangs on ``hang*``, as
    native readers do on some corrupt files."""

    def score(self, inp, worker=None):
        name = inp.path.rsplit("/", 1)[-1]
        if name.startswith("crash"):
            ctypes.string_at(0)  # SIGSEGV: the process dies, no Python exception
        if name.startswith("hang"):
            time.sleep(600)
        return super().score(inp, worker)


@pytest.fixture(scope="module")
def by_value():
    import sys

    import ray.cloudpickle

    me = sys.modules[__name__]

    ray.cloudpickle.register_pickle_by_value(me)  # the actors need not import the tests
    yield
    ray.cloudpickle.unregister_pickle_by_value(me)


def test_a_crashing_and_a_hanging_reader_cost_their_slides_only(slide_checkpoint, tmp_path,
                                                                by_value):
    import shutil

    ckpt, cohort = slide_checkpoint
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ok_a.tiff", "crash.tiff", "hang.tiff", "ok_b.tiff"):
        shutil.copy2(cohort / "test_000.tiff", folder / name)
    s = score_slides(folder, ckpt, tmp_path / "out", scorer_cls=FaultyScorer,
                     run_options=RunOptions(workers=2, timeout=8, retries=1, progress=False),
                     log=lambda *_: None)
    assert s["counts"] == {"ok": 2, "error": 2}, s["errors"]
    errs = {k.rsplit("/", 1)[-1]: v for k, v in s["errors"].items()}
    assert "crashed 2 time(s)" in errs["crash.tiff"]  # tried, retried once, then marked
    assert "timed out after 8 s" in errs["hang.tiff"]


def test_two_node_cluster_spreads_the_scorers(slide_checkpoint, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ckpt, cohort = slide_checkpoint
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        s = score_slides(cohort, ckpt, tmp_path / "out",
                         run_options=RunOptions(workers=2, progress=False, address=cluster.address),
                         log=lambda *_: None)
        nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert s["counts"] == {"ok": 6} and not s["not_scored"]
    assert [p.rsplit("/", 1)[-1] for p in s["skipped"]] == ["manifest.csv"]  # no reader's
    import csv

    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        used = {r["worker"].rsplit("/", 1)[-1] for r in csv.DictReader(fh) if r["worker"]}
    assert len(nodes) == 2 and used == nodes  # both nodes scored
