"""Property-based tests (Hypothesis) of what users type and feed (issue 26 §1): drawn option
values, config values and manifest contents never hang a command, never crash it with anything
but the typed error (exit status 2, one line), and never leave a partial output.

In-process and small (a few dozen examples each, no deadline): the bad-invocation table
(tests/test_bad_invocations.py) runs the real processes.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ram_wsi.cli import main
from ram_wsi.cli_args import UsageError
from ram_wsi.commands.bench import parse_bench
from ram_wsi.commands.convert import parse_convert
from ram_wsi.commands.score import parse_score
from ram_wsi.config import load_config
from ram_wsi.errors import ConfigError, DataError, RamWsiError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# What a user types for a number: numbers, near-numbers and junk.
NUMBERISH = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "0", "-0", "1e9", "1e-9", "0x10", "nan", "inf", "-inf", "1.5",
                     "3,5", "١٢", "2**8", "None", "true"]),
    st.text(max_size=6),
)


def _refused_in_one_line(capsys, exc: BaseException | None) -> None:
    """A refusal is SystemExit(2) with one line on stderr, or a UsageError (the guard prints
    it as one line)."""
    err = capsys.readouterr().err
    if isinstance(exc, SystemExit):
        assert exc.code == 2
        assert len(err.strip().splitlines()) == 1 and ": error: " in err, err
    else:
        assert isinstance(exc, UsageError) and "\n" not in str(exc)


def _parse(fn, argv: list[str], capsys):
    """``fn(argv)``: the namespace, or None after checking the refusal."""
    try:
        return fn(argv)
    except (SystemExit, UsageError) as exc:
        _refused_in_one_line(capsys, exc)
        return None


# ----------------------------------------------------------------------------- option values
@pytest.fixture
def files(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    import zipfile

    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    src = tmp_path / "src.tiff"
    src.write_bytes(b"II*\x00")
    return {"ckpt": str(ckpt), "src": str(src), "out": str(tmp_path / "out")}


@SETTINGS
@given(opt=st.sampled_from(["--samples", "--workers", "--cpus-per-worker", "--seed",
                            "--timeout", "--retries", "--fallback-mpp", "--gpus-per-worker"]),
       value=NUMBERISH)
def test_score_options_parse_into_their_range_or_are_refused(opt, value, files, capsys):
    args = _parse(parse_score, ["S", "-k", files["ckpt"], "-o", files["out"], opt, value],
                  capsys)
    if args is not None:
        got = getattr(args, opt[2:].replace("-", "_"))
        assert isinstance(got, (int, float)) and math.isfinite(got)
        if opt in ("--samples", "--cpus-per-worker", "--timeout", "--fallback-mpp"):
            assert got > 0
        else:
            assert got >= 0
    assert not Path(files["out"]).exists()


@SETTINGS
@given(opt=st.sampled_from(["--chunk", "--shard", "--workers", "--levels", "--clevel"]),
       value=NUMBERISH)
def test_convert_options_parse_into_their_range_or_are_refused(opt, value, files, capsys):
    args = _parse(parse_convert, [files["src"], files["out"], opt, value], capsys)
    if args is not None:
        assert args.chunk >= 1 and 0 <= args.clevel <= 9
        assert args.shard is None or args.shard % args.chunk == 0
        assert all(getattr(args, k) is None or getattr(args, k) >= 1
                   for k in ("workers", "levels"))
    assert not Path(files["out"]).exists()


BENCH_OPTIONS = [("glimpse", "--sizes"), ("glimpse", "--patch"), ("glimpse", "--base"),
                 ("needle", "--minutes"), ("needle", "--threads"), ("remote", "--delays"),
                 ("scaling", "--actors"), ("score", "--workers"), ("score", "--rounds"),
                 ("throughput", "--steps"), ("time-to-accuracy", "--targets")]


@SETTINGS
@given(which=st.sampled_from(BENCH_OPTIONS), value=NUMBERISH)
def test_bench_options_parse_or_are_refused(which, value, tmp_path, capsys):
    name, opt = which
    out = ["--out-dir" if name == "scaling" else "--out", str(tmp_path / "o")] \
        if name in ("glimpse", "needle", "remote", "scaling", "score") else []
    args = _parse(lambda a: parse_bench(name, a), [opt, value, *out], capsys)
    if args is not None:
        got = getattr(args, opt[2:].replace("-", "_"))
        for v in got if isinstance(got, list) else [got]:
            assert math.isfinite(v)
    assert not (tmp_path / "o").exists()


def _make_slides():
    spec = importlib.util.spec_from_file_location("make_slides_props",
                                                  ROOT / "pipelines" / "make_slides.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKE_SLIDES = _make_slides()


@SETTINGS
@given(kind=st.sampled_from(["digit", "needle", "tissue"]),
       fmt=st.sampled_from(["tiff", "zarr", "mixed"]),
       extra=st.lists(st.sampled_from([
           ("--size", "0"), ("--size", "512"), ("--count", "-1"), ("--tile", "100"),
           ("--tile", "64"), ("--mpp", "0"), ("--mpp", "-1"), ("--compression", "none"),
           ("--procedural", "5"), ("--lesion", "300"), ("--adenoma", "2"), ("--val", "1"),
           ("--region-um", "5 1"), ("--split-seed", "3"), ("--mnist", "x")]),
           max_size=3, unique=True))
def test_make_slides_options_apply_to_the_kind_or_are_refused(kind, fmt, extra, tmp_path,
                                                              capsys):
    """Every combination either parses into a run whose options all apply, or is one line:
    never an option that would be silently ignored."""
    argv = [str(tmp_path / "o"), "--kind", kind, "--fmt", fmt]
    for flag, value in extra:
        argv += [flag, *value.split()]

    def parse(a):
        args = MAKE_SLIDES.build_parser().parse_args(a)
        MAKE_SLIDES.check(args)
        return args

    args = _parse(parse, argv, capsys)
    if args is not None:
        given_flags = {f for f, _ in extra}
        assert not ({"--procedural", "--val"} & given_flags and kind == "digit")
        assert not ("--lesion" in given_flags and kind != "needle")
        assert not ("--mnist" in given_flags and kind != "digit")
        assert not ({"--adenoma", "--region-um", "--split-seed"} & given_flags
                    and kind != "tissue")
        assert not (fmt == "mixed" and kind == "digit")
        assert args.size >= 256 and args.tile % 16 == 0
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- a real command
@pytest.fixture(scope="module")
def tiny_slide(tmp_path_factory):
    """A 96x80 two-level TIFF OpenSlide opens (converting it takes a fraction of a second)."""
    import tifffile

    path = tmp_path_factory.mktemp("tiny") / "tiny.tiff"
    rgb = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(rgb, tile=(16, 16), photometric="rgb", metadata=None, subfiletype=0)
        tw.write(rgb[::2, ::2].copy(), tile=(16, 16), photometric="rgb", metadata=None,
                 subfiletype=1)
    return path


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.sampled_from(["0", "-3", "16", "32", "abc", "100000"]),
       clevel=st.sampled_from(["0", "5", "9", "10", "99", "-1"]),
       levels=st.sampled_from([None, "0", "1", "3", "40"]),
       shard=st.sampled_from([None, "0", "32", "48", "64"]))
def test_convert_finishes_whole_or_writes_nothing(chunk, clevel, levels, shard, tiny_slide,
                                                  tmp_path, capsys):
    """``ram-wsi convert`` with drawn options: exit 0 and a store OpenSlide's pixels agree
    with, or exit 2, one line, and no store (no temporary left either)."""
    out = tmp_path / "s.zarr"
    if out.exists():  # hypothesis reuses the function's tmp_path between examples
        import shutil

        shutil.rmtree(out)
    argv = ["convert", str(tiny_slide), str(out), "--chunk", chunk, "--clevel", clevel,
            "--workers", "1"]
    argv += ["--levels", levels] if levels else []
    argv += ["--shard", shard] if shard else []
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers
    if rc == 0:
        from ram_wsi.slide import open_source

        z = open_source(out)
        assert z.dimensions == (96, 80)
        assert np.array_equal(z.read_region(0, 0, 0, 96, 80),
                              open_source(tiny_slide).read_region(0, 0, 0, 96, 80))
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


# ----------------------------------------------------------------------------- config values
def _keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


CONFIG_KEYS = sorted(_keys(load_config().to_dict())) + ["train.nope", "nope", "data.slides"]
YAMLISH = st.one_of(
    NUMBERISH,
    st.sampled_from(["[", "]", "{a: 1}", "[1, 2]", "null", "~", "yes", "no", "'x'", '"',
                     "a: b", "- 1", "&a", "*a", "!!python/object:os.system", "%", "@",
                     "1e400", "-1e400", ".nan", ".inf", "2147483648", "1" * 40]),
)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(key=st.sampled_from(CONFIG_KEYS), value=YAMLISH)
def test_any_set_value_is_a_config_or_a_one_line_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert "\n" not in str(exc) and (key.split(".")[0] in str(exc)
                                         or "override" in str(exc)), str(exc)
        return
    assert cfg.validate() is cfg


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=80), st.sampled_from([
    "train: [\n  lr: 1", "train:\n  lr: [1, 2", "- a\n- b", "42", "train: 3", "\t x: 1",
    "model: {patch: -1}", "data: {source: slides}", "a: &x [*x]"])))
def test_any_yaml_file_is_a_config_or_a_one_line_error_naming_it(text, tmp_path):
    path = tmp_path / "drawn.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and "drawn.yaml" in str(exc), str(exc)


# ----------------------------------------------------------------------------- manifests
CELLS = st.one_of(st.text(max_size=12), st.sampled_from(
    ["slide.tiff", "procedural:needle?size=2048&seed=1", "procedural:nope", "s3://", "../x",
     "", " ", "0", "1", "dots", "train", "val", "test", "=cmd()", "a,b", '"q"']))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(["path", "label", "split", "case", "PATH", "x", ""]),
                       max_size=4),
       rows=st.lists(st.lists(CELLS, max_size=4), max_size=5))
def test_any_manifest_scans_or_is_one_data_error(header, rows, tmp_path):
    """What ``ram-wsi score`` and training read: inputs, or one ``DataError`` naming the
    manifest (a manifest with no slides is the empty-folder error)."""
    from ram_wsi.data.manifest import load_manifest
    from ram_wsi.score.inputs import scan_inputs

    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    path = tmp_path / "drawn.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    try:
        scan = scan_inputs(path)
    except DataError as exc:
        assert "drawn.csv" in str(exc) and "\n" not in str(exc), str(exc)
    else:
        assert scan.inputs and all(i.path for i in scan.inputs)
    try:
        load_manifest(path, check_slides=False)
    except (DataError, ConfigError) as exc:
        assert "drawn.csv" in str(exc), str(exc)
    except RamWsiError as exc:  # any other typed error must still name the manifest
        assert "drawn.csv" in str(exc), str(exc)

