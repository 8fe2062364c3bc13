"""Bad invocations of every command and pipeline script (issue 26 §1): each is refused with
exit status 2 and exactly one line on stderr, ``PROG: error: WHAT (OPTION OR FILE)``, that names
the option or file; no traceback; within 30 s; and nothing written.

Each row runs as a real subprocess from the repository root, as a user would type it. The
arguments are checked before torch loads, so a row takes a fraction of a second (the one that
needs the config loader, a malformed YAML, loads torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ram_wsi.bench import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
RAM = ("-m", "ram_wsi")

# (program words, arguments, what the line must name). Placeholders: {tmp} a folder of its
# own, {out} a path inside it that must stay absent, {file} a plain text file, {notckpt} a
# file that is no checkpoint, {ckpt} a file torch.save could have written (so the check after
# the checkpoint's is reached), {yaml} a malformed YAML file.
CASES: list[tuple[tuple[str, ...], str, str]] = [
    # ram-wsi itself, train, eval
    (RAM, "", "COMMAND"),
    (RAM, "frobnicate", "COMMAND"),
    (RAM, "train --set foo", "--set"),
    (RAM, "train -c {tmp}/missing.yaml", "--config"),
    (RAM, "train -c {yaml}", "bad.yaml"),
    (RAM, "train --out-dir {file}", "--out-dir"),
    (RAM, "train --no-such-option", "--no-such-option"),
    (RAM, "eval {notckpt}", "notckpt.pt"),
    (RAM, "eval {tmp}/missing.pt", "missing.pt"),
    (RAM, "eval {ckpt} --samples 0", "--samples"),
    (RAM, "eval {ckpt} --split train", "--split"),
    (RAM, "eval {ckpt} --figure {tmp}", "--figure"),
    # score
    (RAM, "score {tmp} -k {ckpt} -o {out} --samples -2", "--samples"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --samples 0", "--samples"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --stop-at 0", "--stop-at"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --stop-at 1.5", "--stop-at"),
    (RAM, "score {tmp} -o {out}", "--checkpoint"),
    (RAM, "score {tmp} -k {notckpt} -o {out}", "--checkpoint"),
    (RAM, "score {tmp} -k {ckpt} -o {file}", "--out"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --workers -1", "--workers"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --workers 0 --timeout 5", "--timeout"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --storage-option foo", "--storage-option"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --storage-option a=[", "--storage-option"),
    (RAM, "score {tmp} -k {ckpt} -o {out} --fallback-mpp nan", "--fallback-mpp"),
    # convert
    (RAM, "convert {file} {out} --chunk 0", "--chunk"),
    (RAM, "convert {file} {out} --chunk -3", "--chunk"),
    (RAM, "convert {file} {out} --clevel 99", "--clevel"),
    (RAM, "convert {tmp}/missing.svs {out}", "missing.svs"),
    (RAM, "convert {file} {file}", "(dst)"),
    (RAM, "convert {file} {out} --chunk 64 --shard 100", "--shard"),
    (RAM, "convert {file} {out} --codec gzip", "--codec"),
    (RAM, "convert {file} {out} --storage-option anon=true", "--storage-option"),
    # bench
    (RAM, "bench nope", "NAME"),
    (RAM, "bench glimpse --sizes 0 --out {out}", "--sizes"),
    (RAM, "bench glimpse --backends tifffile --out {out}", "--backends"),
    (RAM, "bench mnist --archs ram,lstm", "--archs"),
    (RAM, "bench needle --kind needle --tiles {tmp} --out {out}", "--tiles"),
    (RAM, "bench needle --lesion 5 --out {out}", "--lesion"),
    (RAM, "bench remote --no-score --checkpoint {ckpt} --out {out}", "--checkpoint"),
    (RAM, "bench scaling --actors 0 --out-dir {out}", "--actors"),
    (RAM, "bench score --threads 0 --out {out}", "--threads"),
    (RAM, "bench score --checkpoint {ckpt} --config {file} --out {out}", "--config"),
    (RAM, "bench throughput --steps 1", "--steps"),
    (RAM, "bench throughput --out-dir {file}", "--out-dir"),
    (RAM, "bench time-to-accuracy --run {tmp} --minutes 3", "--minutes"),
    (RAM, "bench time-to-accuracy --smooth 0", "--smooth"),
    # pipelines
    (("pipelines/make_slides.py",), "{out} --size 0", "--size"),
    (("pipelines/make_slides.py",), "{file} --size 512", "(out)"),
    (("pipelines/make_slides.py",), "{out} --kind digit --procedural 50", "--procedural"),
    (("pipelines/make_slides.py",), "{out} --kind digit --lesion 100", "--lesion"),
    (("pipelines/make_slides.py",), "{out} --kind needle --fmt zarr --compression none",
     "--compression"),
    (("pipelines/make_slides.py",), "{out} --kind digit --fmt mixed", "--fmt"),
    (("pipelines/make_slides.py",), "{out} --tile 100", "--tile"),
    (("pipelines/make_slides.py",), "{out} --kind needle --adenoma 0.3", "--adenoma"),
    (("pipelines/demo.py",), "--size 0 --out {out}", "--size"),
    (("pipelines/demo.py",), "--out {file}", "--out"),
    (("pipelines/demo.py",), "--kind needle --tiles {tmp} --out {out}", "--tiles"),
    (("pipelines/export_seed.py",), "{notckpt} {out}", "notckpt.pt"),
    (("pipelines/export_seed.py",), "{ckpt} {tmp}", "(out)"),
    (("pipelines/glas_manifests.py",), "{out} --folds 1", "--folds"),
    (("pipelines/glas_manifests.py",), "{out} --glas {tmp}/missing", "--glas"),
    (("pipelines/train.py",), "--distributed", "--distributed"),
    (("pipelines/train.py",), "--out-dir {file}", "--out-dir"),
    (("pipelines/convert.py",), "{file} {out} --workers 0", "--workers"),
    (("pipelines/score.py",), "{tmp} -k {ckpt} -o {out} --samples 0", "--samples"),
    (("pipelines/bench_glimpse.py",), "--patch 1 --out {out}", "--patch"),
    (("pipelines/bench_mnist.py",), "--archs foo", "--archs"),
    (("pipelines/bench_needle.py",), "--threads 0 --out {out}", "--threads"),
    (("pipelines/bench_remote.py",), "--stores ftp --out {out}", "--stores"),
    (("pipelines/bench_scaling.py",), "--envs atari --out-dir {out}", "--envs"),
    (("pipelines/bench_score.py",), "--sizes 1 --out {out}", "--sizes"),
    (("pipelines/bench_throughput.py",), "--batches 0", "--batches"),
    (("pipelines/bench_time_to_accuracy.py",), "--targets 200", "--targets"),
]
if "glas" in BENCHMARKS:  # the GlaS benchmark and its script
    CASES += [(RAM, "bench glas --threads 0 --out {out}", "--threads"),
              (("pipelines/bench_glas.py",), "--epochs 0 --out {out}", "--epochs")]


def _prog(words: tuple[str, ...], args: str) -> str:
    """The program a row's error line starts with."""
    if words != RAM:
        return Path(words[0]).name
    first = args.split()[:2]
    if not first or first[0].startswith("{") or first[0] not in (
            "train", "eval", "score", "convert", "bench"):
        return "ram-wsi"
    if first[0] == "bench" and len(first) > 1 and first[1] != "nope":
        return f"ram-wsi bench {first[1]}"
    return f"ram-wsi {first[0]}"


def _id(case: tuple[tuple[str, ...], str, str]) -> str:
    words, args, _ = case
    head = "ram-wsi" if words == RAM else words[0].removeprefix("pipelines/")
    return f"{head} {args}".strip()


@pytest.fixture
def place(tmp_path):
    """The placeholders' values, in a folder of the row's own."""
    (tmp_path / "plain.txt").write_text("not a slide, not a checkpoint\n")
    (tmp_path / "notckpt.pt").write_text("not a checkpoint\n")
    with zipfile.ZipFile(tmp_path / "ckpt.pt", "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    (tmp_path / "bad.yaml").write_text("train: [\n  lr: 0.1\n")
    return {"tmp": str(tmp_path), "out": str(tmp_path / "out"),
            "file": str(tmp_path / "plain.txt"), "notckpt": str(tmp_path / "notckpt.pt"),
            "ckpt": str(tmp_path / "ckpt.pt"), "yaml": str(tmp_path / "bad.yaml")}


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_invocation_is_one_line_exit_2_nothing_written(case, place, tmp_path):
    words, args, names = case
    argv = [a.format(**place) for a in args.split()]
    before = _tree(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *words, *argv], cwd=ROOT, env=env, timeout=30,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{_prog(words, args)}: error: "), lines[0]
    assert names in lines[0], lines[0]
    assert _tree(tmp_path) == before  # nothing written, not even a folder
    assert took < 30


def test_the_table_covers_every_command_and_script():
    """Every subcommand, benchmark and pipeline script has a row (a new one needs one too)."""
    rows = {_id(c) for c in CASES}
    for cmd in ("train", "eval", "score", "convert"):
        assert any(r.startswith(f"ram-wsi {cmd} ") for r in rows), cmd
    for name in BENCHMARKS:
        assert any(r.startswith(f"ram-wsi bench {name}") for r in rows), name
    for script in sorted((ROOT / "pipelines").glob("*.py")):
        if script.name.startswith("_") or (script.name == "bench_glas.py"
                                           and "glas" not in BENCHMARKS):
            continue
        assert any(r.startswith(script.name + " ") for r in rows), script.name
    assert len(CASES) >= 40


def test_debug_shows_the_traceback_instead(place):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ram_wsi", "convert", place["file"],
                           place["file"], "--debug"], cwd=ROOT, env=env, timeout=30,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "UsageError" in proc.stderr
