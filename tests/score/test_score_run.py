"""``ram-wsi score`` end to end, on Ray: every file of a real-looking folder gets a row, the
bad ones with their reason; the outputs are what QuPath and people open; resuming skips what
is done, and a run killed mid-way and resumed writes the same results as one that was not."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ram_wsi.score.results import COLUMNS, NOISY_COLUMNS, columns_for
from ram_wsi.score.runner import RunOptions, exit_status, format_summary, score_slides

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"test_000.tiff", "test_001.tiff", "test_002.zarr", "test_003.zarr", "test_004.tiff",
        "test_005.tiff", "sub/again.tiff", "boxes.tiff", "boxes_0.dcm", "small.svs",
        "photo.png", "photo.jpg"}


def _rows(out):
    with open(Path(out) / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _quiet(**kw):
    return RunOptions(progress=False, **kw)


@pytest.fixture(scope="module")
def scored(slide_checkpoint, mixed_folder, tmp_path_factory):
    ckpt, _ = slide_checkpoint
    folder, bad = mixed_folder
    out = tmp_path_factory.mktemp("scored")
    summary = score_slides(folder, ckpt, out, run_options=_quiet(workers=2),
                           log=lambda *_: None)
    return folder, bad, out, summary


def _name(folder, path):
    return Path(path).relative_to(folder).as_posix()


def test_every_file_gets_a_row_and_the_bad_ones_say_why(scored, skipped_files):
    folder, bad, out, summary = scored
    rows = _rows(out)
    by_name = {_name(folder, r["path"]): r for r in rows}
    assert set(by_name) == GOOD | set(bad)  # sidecars and the DICOM's 2nd file fold in
    assert len(rows) == len(by_name)
    for name in GOOD:
        assert by_name[name]["status"] == "ok", by_name[name]["error"]
        assert by_name[name]["error"] == ""
    for name, why in bad.items():
        r = by_name[name]
        assert r["status"] == "error" and why in r["error"] and name.split("/")[-1] in r["error"]
    assert by_name["boxes_0.dcm"]["files"] == "2"
    assert by_name["photo.png"]["backend"] == "image"
    assert summary["counts"] == {"ok": len(GOOD), "error": len(bad)}
    assert exit_status(summary) == 1  # a failed slide shows in the exit status
    # Files no reader claims by name are listed, not given error rows (issue 23).
    assert [_name(folder, p) for p in summary["skipped"]] == skipped_files
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["skipped"] == summary["skipped"]


def test_columns_are_the_documented_ones_and_rows_hold_together(scored):
    _, _, out, _ = scored
    rows = _rows(out)
    names = ["dots", "stripes"]
    assert list(rows[0]) == columns_for(names)
    assert {c for c, _, _ in COLUMNS} >= set(NOISY_COLUMNS)
    for r in (r for r in rows if r["status"] == "ok"):
        p = [float(r[f"prob_{c}"]) for c in names]
        assert abs(sum(p) - 1) < 1e-4 and r["predicted"] == names[p.index(max(p))]
        assert int(r["glimpses_read"]) == int(r["glimpses"]) * (int(r["rollouts"]) + 1)
        assert 0 < int(r["pixels_decision"]) <= int(r["pixels_read"])
        parts = sum(float(r[k]) for k in ("seconds_open", "seconds_glimpses", "seconds_model"))
        assert abs(parts - float(r["seconds"])) < 2e-3
        st = os.stat(r["path"]) if not r["path"].endswith(".zarr") else None
        if st is not None:
            assert int(r["file_size"]) == st.st_size and float(r["file_mtime"]) == st.st_mtime
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == len(rows) and table.column_names == columns_for(names)
    assert str(table.schema.field("pixels_read").type) == "int64"
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["status"] == "done" and meta["class_names"] == names
    assert len(meta["checkpoint_sha256"]) == 64 and meta["versions"]["torch"]
    assert meta["counts"] == {"ok": len(GOOD), "error": 6} and len(meta["workers"]) == 2


def test_geojson_is_quPath_shaped_and_its_boxes_lie_in_the_slide(scored):
    import uuid

    _, _, out, _ = scored
    for r in (r for r in _rows(out) if r["status"] == "ok"):
        fc = json.loads((out / "geojson" / f"{r['slide_id']}.geojson").read_text())
        assert fc["type"] == "FeatureCollection"
        kinds = [f["properties"]["objectType"] for f in fc["features"]]
        assert kinds[0] == "annotation" and set(kinds[1:]) == {"detection"}
        w, h = int(r["width"]), int(r["height"])
        for f in fc["features"]:
            uuid.UUID(f["id"])
            props = f["properties"]
            assert props["classification"]["name"] == r["predicted"]
            assert all(isinstance(v, float) for v in props["measurements"].values())
            ring = f["geometry"]["coordinates"]
            pts = ring if f["geometry"]["type"] == "LineString" else ring[0]
            assert all(0 <= x <= w and 0 <= y <= h for x, y in pts), (r["path"], pts)


def test_thumbnails_open(scored):
    from PIL import Image

    _, _, out, _ = scored
    ok = [r for r in _rows(out) if r["status"] == "ok"]
    for r in ok:
        with Image.open(out / "thumbnails" / f"{r['slide_id']}.png") as im:
            assert im.format == "PNG" and im.size == (512, 512)
    assert not list((out / "locks").iterdir())  # every lock released


def test_resume_skips_unchanged_files_and_rescores_changed_ones(scored, slide_checkpoint,
                                                                tmp_path):
    import shutil

    folder, _, out0, _ = scored
    ckpt, _ = slide_checkpoint
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    again = score_slides(folder, ckpt, out, run_options=_quiet(workers=0), log=lambda *_: None)
    assert again["scored_now"] == 0 and again["rows"] == 18
    (out / "thumbnails" / "small.png").unlink()  # an output gone: that slide is redone
    errs = score_slides(folder, ckpt, out, run_options=_quiet(workers=0, retry_errors=True),
                        log=lambda *_: None)
    assert errs["scored_now"] == 6 + 1
    before = {r["path"]: r for r in _rows(out)}
    target = folder / "sub" / "again.tiff"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # "changed"
    try:
        moved = score_slides(folder, ckpt, out, run_options=_quiet(workers=0),
                             log=lambda *_: None)
    finally:  # the folder is shared with the other tests
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert moved["scored_now"] == 1
    after = {r["path"]: r for r in _rows(out)}
    assert float(after[str(target)]["file_mtime"]) != float(before[str(target)]["file_mtime"])
    # the same slide scores the same (its seed comes from its slide_id), in- or out of Ray
    same = [k for k in after[str(target)] if k not in NOISY_COLUMNS + ("file_mtime",)]
    assert {k: after[str(target)][k] for k in same} == {k: before[str(target)][k] for k in same}


def test_a_slide_another_live_run_holds_is_left_to_it(slide_checkpoint, mixed_folder,
                                                      tmp_path):
    from ram_wsi.score.locks import SlideLock

    ckpt, _ = slide_checkpoint
    folder, _ = mixed_folder
    lock = SlideLock(tmp_path / "locks", "small")
    assert lock.acquire()  # "another run": this live process
    s = score_slides(folder / "small.svs", ckpt, tmp_path, run_options=_quiet(workers=0),
                     log=lambda *_: None)
    assert s["rows"] == 0 and s["not_scored"] and exit_status(s) == 1
    lock.release()
    s = score_slides(folder / "small.svs", ckpt, tmp_path, run_options=_quiet(workers=0),
                     log=lambda *_: None)
    assert s["counts"] == {"ok": 1} and exit_status(s) == 0


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "ram_wsi", "score", *map(str, args),
                             "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in NOISY_COLUMNS} for r in rows]


def test_killed_and_resumed_run_gives_the_same_results(scored, slide_checkpoint, tmp_path):
    folder, _, out_ref, _ = scored
    ckpt, _ = slide_checkpoint
    out = tmp_path / "killed"
    proc = _cli([folder, "--checkpoint", ckpt, "--out", out, "--workers", "1"])
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)  # no goodbye: the driver and its Ray die at once
    proc.wait()
    done = len(journal.read_text().splitlines())
    assert 4 <= done < 18
    res = _cli([folder, "--checkpoint", ckpt, "--out", out, "--workers", "1"])
    stdout, stderr = res.communicate(timeout=300)
    assert res.returncode == 1, stderr  # 1: some slides are bad ones
    assert f"{18 - done} to score" in stderr or f"{done} already scored" in stderr, stderr
    assert _stable(_rows(out)) == _stable(_rows(out_ref))
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert len(lines) == 18 and len({x["path"] for x in lines}) == 18  # none lost or repeated
    assert "scored 18 inputs" in stdout


def test_a_labelled_manifest_reports_accuracy_balanced_accuracy_and_auc_per_class(
        slide_checkpoint, tmp_path):
    """``ram-wsi score MANIFEST.csv`` with a label column: the summary and run_metadata.json
    say how right the predictions were, overall and per class (issue 23)."""
    ckpt, cohort = slide_checkpoint
    rows = ["path,label"]
    for p in sorted(cohort.glob("test_*")):
        if p.suffix in (".tiff", ".zarr"):
            rows.append(f"{p},{json.loads(Path(str(p) + '.json').read_text())['pattern']}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    s = score_slides(tmp_path / "m.csv", ckpt, tmp_path / "out",
                     run_options=_quiet(workers=0), log=lambda *_: None)
    got = {r["path"]: r for r in _rows(tmp_path / "out")}
    known = [r for r in got.values() if r["status"] == "ok"]
    assert s["labelled"] == len(known) == len(rows) - 1 and not s["skipped"]
    right = sum(r["predicted"] == r["label"] for r in known)
    assert s["accuracy"] == round(right / len(known), 4)
    assert set(s["per_class"]) == {"dots", "stripes"}
    for name, m in s["per_class"].items():
        mine = [r for r in known if r["label"] == name]
        assert m["slides"] == len(mine) > 0
        assert m["recall"] == round(sum(r["predicted"] == name for r in mine) / len(mine), 4)
        assert m["auc"] is None or 0.0 <= m["auc"] <= 1.0
    recalls = [m["recall"] for m in s["per_class"].values()]
    assert s["balanced_accuracy"] == pytest.approx(sum(recalls) / 2, abs=1e-4)
    assert s["auc"] == s["per_class"]["stripes"]["auc"]  # two classes: class 1's AUC
    meta = json.loads((tmp_path / "out" / "run_metadata.json").read_text())
    for key in ("labelled", "accuracy", "balanced_accuracy", "auc", "per_class"):
        assert meta[key] == s[key], key
    text = format_summary(s)
    assert "balanced accuracy" in text and "stripes:" in text and "AUC" in text


def test_a_folder_of_files_no_reader_claims_is_one_clear_error(slide_checkpoint, tmp_path):
    from ram_wsi.errors import DataError

    ckpt, _ = slide_checkpoint
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "manifest.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="no reader claims the 1 found: manifest.csv"):
        score_slides(tmp_path / "in", ckpt, tmp_path / "out", run_options=_quiet(workers=0),
                     log=lambda *_: None)


def test_labels_outside_the_checkpoints_classes_are_warned_and_left_out(slide_checkpoint,
                                                                        tmp_path):
    """A manifest label the checkpoint does not know (issue 26 §2): a warning listing it when
    the run starts, the metrics over the known labels only, and the list in the summary."""
    ckpt, cohort = slide_checkpoint
    tests = sorted(p for p in cohort.glob("test_*") if p.suffix in (".tiff", ".zarr"))[:3]
    labels = [json.loads(Path(str(p) + ".json").read_text())["pattern"] for p in tests]
    labels[0] = "lymphoma"
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(
        f"{p},{lab}\n" for p, lab in zip(tests, labels)))
    said: list[str] = []
    s = score_slides(tmp_path / "m.csv", ckpt, tmp_path / "out",
                     run_options=_quiet(workers=0), log=said.append)
    assert any("warning" in m and "lymphoma" in m for m in said), said
    assert s["unknown_labels"] == ["lymphoma"] and s["labelled"] == 2
    assert "lymphoma" in format_summary(s)
    meta = json.loads((tmp_path / "out" / "run_metadata.json").read_text())
    assert meta["unknown_labels"] == ["lymphoma"]
