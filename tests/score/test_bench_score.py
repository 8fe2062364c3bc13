"""The scoring benchmark end to end on tiny slides (its figures come from full-size runs)."""

import json

from ram_wsi.bench import main


def test_bench_score_rows_and_table(slide_checkpoint, tmp_path, capsys):
    ckpt, _ = slide_checkpoint
    out = tmp_path / "bench"
    rc = main(["score", "--checkpoint", str(ckpt), "--sizes", "4096", "1024", "--slides", "2",
               "--rounds", "1", "--throughput-slides", "5", "--workers", "0",
               "--memory-slides", "3", "--single-size", "700", "500", "--single-slides", "1",
               "--out", str(out)])
    assert rc == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    saved = [json.loads(line) for line in (out / "score.jsonl").read_text().splitlines()]
    assert printed == saved
    size = [r for r in saved if r["part"] == "size"]
    assert [r["size"] for r in size] == [1024, 4096]  # smallest first: the ratios' base
    assert size[0]["vs_smallest"] == 1.0
    for r in size:
        parts = sum(r[f"seconds_{k}"] for k in ("open", "glimpses", "model", "write"))
        assert 0 < parts <= r["seconds_per_slide_max"] * 1.05
        assert r["pixels_read"] >= r["pixels_decision"] > 0
    dense = {r["size"]: r for r in saved if r["part"] == "dense"}
    assert dense[4096]["pixels_read"] > 2 * dense[1024]["pixels_read"]  # dense grows, RAM not
    (tp,) = [r for r in saved if r["part"] == "throughput"]
    assert tp["ok"] == tp["slides"] == 5 and tp["slides_per_second"] > 0
    (mem,) = [r for r in saved if r["part"] == "memory"]
    assert mem["slides"] == 3 and mem["peak_rss_mib"] >= mem["rss_end_mib"] > 0
    assert mem["caches"]["block_bytes"] > 0
    # the linked folder holds distinct names for the same few files
    assert len(list((out / "folder").iterdir())) == 5
    # a one-level slide (TIFF, JPEG image) against the pyramid of the same pixels
    single = {r["kind"]: r for r in saved if r["part"] == "single"}
    assert list(single) == ["pyramid tiff", "single-level tiff", "jpeg image"]
    assert single["pyramid tiff"]["vs_pyramid"] == 1.0
    for r in single.values():
        assert r["seconds_per_slide"] > 0 and (r["width"], r["height"]) == (700, 500)
    for kind in ("single-level tiff", "jpeg image"):
        assert 0 < single[kind]["pixels_vs_slide"] <= 1.0  # never more than its own pixels
