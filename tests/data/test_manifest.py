"""Slide manifests: parsing, every kind of bad row, case-level stratified splits, weights.

Real files throughout: tiny synthetic TIFFs, OpenSlide's fixtures in ../shared/data/slides, an
empty file, a text file and a missing path, opened by the real ``open_source``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ram_wsi.data.manifest import (
    BadRow,
    SlideRecord,
    load_manifest,
    read_manifest,
    write_manifest,
)
from ram_wsi.errors import DataError
from ram_wsi.slide import write_synthetic_slide

SLIDES = Path(__file__).parents[2].parent / "shared" / "data" / "slides"
needs_shared = pytest.mark.skipif(not (SLIDES / "small.svs").exists(),
                                  reason="../shared/data/slides is not here")
URI = "procedural:needle?size=4096&seed=1"


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory) -> Path:
    """Four 1024 px synthetic slides s0..s3, an empty ``empty.svs`` and a text ``notes.svs``."""
    d = tmp_path_factory.mktemp("slides")
    for i in range(4):
        write_synthetic_slide(d / f"s{i}.tiff", 1024, seed=i, label=i % 2)
    (d / "empty.svs").write_bytes(b"")
    (d / "notes.svs").write_text("these are notes, not a slide\n")
    return d


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _fake(n_cases: int, label: str, prefix: str, slides_per_case: int = 1) -> str:
    return "".join(f"{prefix}{c}_{k}.tiff,{label},,{prefix}{c}\n"
                   for c in range(n_cases) for k in range(slides_per_case))


@needs_shared
def test_every_bad_row_in_one_error_and_drop_bad_drops_exactly_those(slide_dir):
    m = _csv(slide_dir / "bad.csv",
             "path,label\n"
             f"s0.tiff,dots\n"                     # 2 good
             "./empty.svs,dots\n"                  # 3 empty file
             "notes.svs,dots\n"                    # 4 text file
             "missing.svs,dots\n"                  # 5 missing
             f"{SLIDES / 'unopenable.tiff'},dots\n"   # 6 fails at open
             f"{SLIDES / 'unreadable.svs'},stripes\n"  # 7 opens (fails only at read): good
             f"{SLIDES / 'small.svs'},stripes\n"   # 8 good
             "./s0.tiff,stripes\n"                 # 9 same file as row 2
             ",dots\n"                             # 10 no path
             "s1.tiff,\n"                          # 11 no label
             "s2.tiff,dots\n"                      # 12 good
             f"{slide_dir}/sub/../s3.tiff,stripes\n")  # 13 good (normalised)
    with pytest.raises(DataError) as err:
        load_manifest(m)
    msg = err.value.cause
    lines = msg.splitlines()
    assert lines[0] == "7 of 12 rows are bad:"
    assert lines[-1] == "set data.slides.drop_bad_rows: true to drop them"
    body = lines[1:-1]
    assert [ln.split(" (")[0].strip() for ln in body] == [
        "row 3", "row 4", "row 5", "row 6", "row 9", "row 10", "row 11"]
    assert body[0].startswith(f"  row 3 ({slide_dir / 'empty.svs'}): cannot open slide: ")
    assert body[2] == f"  row 5 ({slide_dir / 'missing.svs'}): cannot open slide: " \
                      "no such file or directory"
    assert "Unsupported TIFF compression" in body[3]
    assert body[4] == f"  row 9 ({slide_dir / 's0.tiff'}): duplicate of row 2"
    assert body[5] == "  row 10 (-): path is empty"
    assert body[6] == f"  row 11 ({slide_dir / 's1.tiff'}): label is empty"
    assert err.value.path == str(m)

    got = load_manifest(m, drop_bad=True)
    assert [b.row for b in got.dropped] == [3, 4, 5, 6, 9, 10, 11]
    assert all(isinstance(b, BadRow) for b in got.dropped)
    assert got.dropped[4] == BadRow(9, str(slide_dir / "s0.tiff"), "duplicate of row 2")
    assert [r.row for r in got.records] == [2, 7, 8, 12, 13]
    assert [r.path for r in got.records] == [
        str(slide_dir / "s0.tiff"), str(SLIDES / "unreadable.svs"), str(SLIDES / "small.svs"),
        str(slide_dir / "s2.tiff"), str(slide_dir / "s3.tiff")]
    # classes come from every labelled row, so dropping rows never renumbers them
    assert got.class_names == ["dots", "stripes"]
    assert [r.label for r in got.records] == [0, 1, 1, 0, 1]
    assert got.describe().endswith(", 7 rows dropped")


def test_bad_split_value_aliases_and_checkpoint_classes(tmp_path):
    m = _csv(tmp_path / "m.csv",
             "path,label,split\n"
             "a.tiff,cat,Validation\n"
             "b.tiff,dog,valid\n"
             "c.tiff,cat,TRAIN\n"
             "d.tiff,dog,holdout\n"
             "e.tiff,bird,test\n")
    with pytest.raises(DataError) as err:
        load_manifest(m, check_slides=False, class_names=["cat", "dog"])
    assert err.value.cause.splitlines()[1:-1] == [
        f"  row 5 ({tmp_path / 'd.tiff'}): split 'holdout' is not one of train, val, test",
        (f"  row 6 ({tmp_path / 'e.tiff'}): label 'bird' is not one of the checkpoint's "
         "classes cat, dog")]
    got = load_manifest(m, check_slides=False, class_names=["cat", "dog"], drop_bad=True)
    assert [(r.row, r.split, r.label) for r in got.records] == [
        (2, "val", 0), (3, "val", 1), (4, "train", 0)]
    assert got.class_names == ["cat", "dog"]


def test_duplicate_through_different_spellings(tmp_path):
    m = _csv(tmp_path / "m.csv",
             f"path,label\na.tiff,0\n./a.tiff,1\nsub/../a.tiff,0\n{tmp_path}/a.tiff,1\n"
             "b.tiff,1\n")
    got = load_manifest(m, check_slides=False, drop_bad=True)
    assert [(b.row, b.reason) for b in got.dropped] == [
        (3, "duplicate of row 2"), (4, "duplicate of row 2"), (5, "duplicate of row 2")]
    assert [r.row for r in got.records] == [2, 6]


def test_file_level_errors_raise_at_once(tmp_path):
    with pytest.raises(DataError, match="slide manifest not found"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="manifest is empty"):
        load_manifest(_csv(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match=r"lacks column\(s\) label"):
        load_manifest(_csv(tmp_path / "nolabel.csv", "path,class\na.tiff,0\n"))
    with pytest.raises(DataError, match="manifest has no usable rows"):
        load_manifest(_csv(tmp_path / "header.csv", "path,label\n"), check_slides=False)
    with pytest.raises(DataError, match="all 2 rows are bad"):
        load_manifest(_csv(tmp_path / "allbad.csv", "path,label\n,0\nb.tiff,\n"),
                      check_slides=False, drop_bad=True)


def test_header_case_whitespace_extra_columns_and_integer_labels(tmp_path):
    m = _csv(tmp_path / "m.csv",
             " Path , LABEL ,notes, Split\n"
             "a.tiff,2,anything,train\n"
             "\n"
             "b.tiff,0,,test\n")
    got = load_manifest(m, check_slides=False)
    assert got.class_names == ["0", "1", "2"]
    assert got.records == [
        SlideRecord(str(tmp_path / "a.tiff"), 2, "train", str(tmp_path / "a.tiff"), 2),
        SlideRecord(str(tmp_path / "b.tiff"), 0, "test", str(tmp_path / "b.tiff"), 4)]
    assert got.class_counts() == {"0": 1, "1": 0, "2": 1}
    assert got.class_counts("test") == {"0": 1, "1": 0, "2": 0}


def test_stratified_split_proportions_by_case(tmp_path):
    # class a: 20 cases of 1 slide; class b: 10 cases of 2 slides; class c: 3 cases; d: 2 cases
    text = ("path,label,split,case\n" + _fake(20, "a", "A") + _fake(10, "b", "B", 2)
            + _fake(3, "c", "C") + _fake(2, "d", "D"))
    m = _csv(tmp_path / "m.csv", text)
    got = load_manifest(m, check_slides=False, seed=0)
    per_case: dict[str, set[str]] = {}
    for r in got.records:
        per_case.setdefault(r.case, set()).add(r.split)
    assert all(len(s) == 1 for s in per_case.values())          # no case straddles splits
    cases = {s: {c for c, v in per_case.items() if v == {s}} for s in ("train", "val", "test")}
    counts = {s: {k: sum(c.startswith(k) for c in cases[s]) for k in "ABCD"} for s in cases}
    # round(20 * .15) = 3; round(10 * .15) = 2; 3 cases -> at least 1 each; 2 cases -> train
    assert counts == {"train": {"A": 14, "B": 6, "C": 1, "D": 2},
                      "val": {"A": 3, "B": 2, "C": 1, "D": 0},
                      "test": {"A": 3, "B": 2, "C": 1, "D": 0}}
    assert got.class_counts("val") == {"a": 3, "b": 4, "c": 1, "d": 0}
    assert got.split_method == "seeded"
    assert got.describe() == (
        "manifest m.csv: 45 slides (train 29, val 8, test 8), classes a 20 / b 20 / c 3 / d 2, "
        "split: seeded stratified (seed 0) by case")

    def assignment(seed):
        return [r.split for r in load_manifest(m, check_slides=False, seed=seed).records]

    assert assignment(0) == [r.split for r in got.records]       # deterministic
    assert assignment(0) != assignment(1)                        # the seed matters
    assert sorted(assignment(1)) == sorted(assignment(0))        # same proportions


def test_case_majority_label_is_the_stratum(tmp_path):
    # case X: labels a, b, b -> stratum b; Y: a, b -> tie -> a (smallest index)
    m = _csv(tmp_path / "m.csv", "path,label,case\nx1,a,X\nx2,b,X\nx3,b,X\ny1,a,Y\ny2,b,Y\n")
    from ram_wsi.data.manifest import _split_cases
    assert _split_cases({"X": [0, 1, 1], "Y": [0, 1]}, 2, 0, 0.15, 0.15) == {
        "X": "train", "Y": "train"}
    got = load_manifest(m, check_slides=False)
    assert {r.case for r in got.records} == {"X", "Y"}
    assert [r.split for r in got.records] == ["train"] * 5
    # stratum b = X, Y, Z (majority b): one case each; stratum a = W (a tie) and V: with these
    # fractions 2 cases give one val and one test (a lone V would stay in train)
    many = {"X": [0, 1, 1], "Y": [1], "Z": [1, 1, 0], "W": [0, 1], "V": [0]}
    for seed in range(5):
        split = _split_cases(many, 2, seed, 0.34, 0.34)
        assert sorted(split[c] for c in ("X", "Y", "Z")) == ["test", "train", "val"]
        assert sorted(split[c] for c in ("W", "V")) == ["test", "val"]


def test_split_does_not_depend_on_how_strata_interleave_in_the_file(tmp_path):
    a, b = _fake(12, "a", "A"), _fake(12, "b", "B")
    first = load_manifest(_csv(tmp_path / "ab.csv", "path,label,split,case\n" + a + b),
                          check_slides=False, seed=3)
    second = load_manifest(_csv(tmp_path / "ba.csv", "path,label,split,case\n" + b + a),
                           check_slides=False, seed=3)
    assert {r.case: r.split for r in first.records} == {r.case: r.split for r in second.records}


def test_explicit_split_column_honoured_and_spread_over_the_case(tmp_path):
    text = ("path,label,split,case\n"
            "p1a.tiff,a,test,P1\n"
            "p1b.tiff,a,,P1\n"           # gets test from its case
            "p2.tiff,b,val,\n"
            + _fake(6, "a", "A") + _fake(6, "b", "B"))
    got = load_manifest(_csv(tmp_path / "m.csv", text), check_slides=False)
    assert [(r.row, r.split, r.case) for r in got.records[:3]] == [
        (2, "test", "P1"), (3, "test", "P1"), (4, "val", str(tmp_path / "p2.tiff"))]
    assert got.split_method == "mixed"
    assert "split: column + seeded stratified (seed 0) by case" in got.describe()
    only_column = load_manifest(_csv(tmp_path / "c.csv", "path,label,split\na,x,train\nb,y,val\n"),
                                check_slides=False)
    assert only_column.describe() == ("manifest c.csv: 2 slides (train 1, val 1, test 0), "
                                      "classes x 1 / y 1, split: column")


def test_case_straddling_explicit_splits_is_an_error(tmp_path):
    m = _csv(tmp_path / "m.csv",
             "path,label,split,case\n"
             "a.tiff,x,train,P7\n"
             "b.tiff,x,,P7\n"
             "c.tiff,y,val,P8\n"
             "d.tiff,y,test,P7\n"
             "e.tiff,y,train,P9\n")
    with pytest.raises(DataError) as err:
        load_manifest(m, check_slides=False)
    why = "case P7 is split across train (row 2) and test (row 5)"
    assert err.value.cause.splitlines()[1:-1] == [
        f"  row {n} ({tmp_path / p}): {why}" for n, p in ((2, "a.tiff"), (3, "b.tiff"),
                                                           (5, "d.tiff"))]
    got = load_manifest(m, check_slides=False, drop_bad=True)
    assert [(r.row, r.split) for r in got.records] == [(4, "val"), (6, "train")]


def test_relative_paths_resolve_against_the_manifest_folder_and_uris_are_kept(
        tmp_path, monkeypatch):
    sub = tmp_path / "data"
    sub.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _csv(sub / "m.csv", f"path,label\nx/a.tiff,0\n../b.tiff,1\n{URI},1\n"
                        "procedural:needle?size=4096&seed=2,0\n")
    monkeypatch.chdir(elsewhere)
    got = load_manifest(Path("..") / "data" / "m.csv", check_slides=False)
    assert [r.path for r in got.records] == [
        str(sub / "x" / "a.tiff"), str(tmp_path / "b.tiff"), URI,
        "procedural:needle?size=4096&seed=2"]
    assert got.records[2].case == URI
    assert all(os.path.isabs(r.path) for r in got.records[:2])


def test_real_slides_open_and_relative_paths_in_slide_folder(slide_dir, monkeypatch, tmp_path):
    m = _csv(slide_dir / "good.csv", "path,label,split\ns0.tiff,0,train\ns1.tiff,1,train\n"
                                     "s2.tiff,0,val\n./s3.tiff,1,test\n")
    monkeypatch.chdir(tmp_path)
    got = load_manifest(m)      # really opens every slide
    assert [r.path for r in got.records] == [str(slide_dir / f"s{i}.tiff") for i in range(4)]
    assert got.dropped == []
    assert read_manifest(m) == ([str(slide_dir / f"s{i}.tiff") for i in range(4)],
                                [0, 1, 0, 1], ["0", "1"])


def test_sampling_weights_uniform_and_balanced(tmp_path):
    text = "path,label,split\n" + "".join(f"a{i},a,train\n" for i in range(6)) \
        + "b0,b,train\nb1,b,train\nc0,c,val\n"
    got = load_manifest(_csv(tmp_path / "m.csv", text), check_slides=False)
    w = got.sampling_weights()
    assert w.dtype == np.float64 and w.shape == (8,)
    np.testing.assert_allclose(w, np.full(8, 1 / 8))
    wb = got.sampling_weights("train", balanced=True)
    np.testing.assert_allclose(wb, [1 / 12] * 6 + [1 / 4] * 2)
    assert wb.sum() == pytest.approx(1.0)
    labels = np.array([r.label for r in got.split("train")])
    assert wb[labels == 0].sum() == pytest.approx(0.5)
    assert wb[labels == 1].sum() == pytest.approx(0.5)
    np.testing.assert_allclose(got.sampling_weights("validation", balanced=True), [1.0])
    with pytest.raises(DataError, match="no slides in split 'test'"):
        got.sampling_weights("test")
    with pytest.raises(ValueError, match="split must be one of"):
        got.split("holdout")


def test_write_then_load_round_trip_with_split_and_case(tmp_path):
    rows = [("a.tiff", "x", "train", "P1"), ("b.tiff", "y", "val", "P2"),
            ("c.tiff", "x", "train", "P1"), ("d.tiff", "y")]
    p = write_manifest(tmp_path / "m.csv", rows)
    assert p.read_text() == ("path,label,split,case\na.tiff,x,train,P1\nb.tiff,y,val,P2\n"
                             "c.tiff,x,train,P1\nd.tiff,y,,\n")
    got = load_manifest(p, check_slides=False)
    assert [(Path(r.path).name, got.class_names[r.label], r.split, r.case)
            for r in got.records[:3]] == [("a.tiff", "x", "train", "P1"),
                                          ("b.tiff", "y", "val", "P2"),
                                          ("c.tiff", "x", "train", "P1")]
    assert got.records[3].case == str(tmp_path / "d.tiff")
    assert got.records[3].split == "train"     # a 1-case stratum stays in train
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]    # atomic: no temp left


def test_read_manifest_old_triple_and_two_column_write(tmp_path):
    p = write_manifest(tmp_path / "m.csv", [("s1.tiff", 1), ("s0.tiff", 0), ("s3.tiff", 3)])
    assert p.read_text() == "path,label\ns1.tiff,1\ns0.tiff,0\ns3.tiff,3\n"
    paths, labels, names = read_manifest(p)
    assert paths == [str(tmp_path / n) for n in ("s1.tiff", "s0.tiff", "s3.tiff")]
    assert labels == [1, 0, 3]
    assert names == ["0", "1", "2", "3"]
    with pytest.raises(DataError, match="1 of 1 row is bad"):
        read_manifest(_csv(tmp_path / "bad.csv", "path,label\n,0\n"))


def test_uris_are_opened_by_open_source_not_stat_ed(tmp_path):
    pytest.importorskip("ram_wsi.slide.procedural")
    m = _csv(tmp_path / "m.csv", f"path,label\n{URI},1\ns3:bucket/x.svs,0\n"
                                 "procedural:nosuch?size=64,0\n")
    got = load_manifest(m, drop_bad=True)     # the real open_source
    assert [r.path for r in got.records] == [URI]
    assert [(b.row, b.path) for b in got.dropped] == [
        (3, "s3:bucket/x.svs"), (4, "procedural:nosuch?size=64")]
    assert "unsupported URI scheme 's3'" in got.dropped[0].reason
    from ram_wsi.slide.synth import KINDS  # the kinds table grows (tissue mosaics, ...)

    assert got.dropped[1].reason == ("cannot open slide: unknown procedural kind 'nosuch' "
                                     f"(known: {', '.join(KINDS)})")
