"""The command line: user mistakes give one clear line naming the file or key, exit status 2."""

import gzip
import struct

import numpy as np
import pytest

from ram_wsi.cli import main


def test_unknown_config_key_exits_2_naming_key_and_file(tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("train:\n  lerning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.lerning_rate" in err and "typo.yaml" in err


def test_patch_larger_than_image_exits_2(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("data:\n  task: mnist28\nmodel:\n  patch: 29\n  scales: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "model.patch" in capsys.readouterr().err


def test_malformed_idx_file_exits_2_naming_the_file(tmp_path, capsys):
    d = tmp_path / "mnist"
    d.mkdir()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, 500, 28, 28) + b"\0" * 100)  # truncated
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, 500) + np.zeros(500, np.uint8).tobytes())
    rc = main(["train", "--set", "data.fallback_synthetic=false", "--data-dir", str(d),
               "--out-dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "truncated" in err


def test_missing_mnist_dir_without_fallback_exits_2(tmp_path, capsys):
    rc = main(["train", "--set", "data.fallback_synthetic=false", "--data-dir",
               str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")])
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "bench", "convert"):
        assert cmd in out


@pytest.mark.parametrize("name", ["mnist", "time-to-accuracy", "throughput", "glimpse",
                                  "scaling", "needle", "score"])
def test_every_benchmark_help_names_its_program(name, capsys):
    from ram_wsi.bench import BENCHMARKS

    assert name in BENCHMARKS
    with pytest.raises(SystemExit) as exit_:
        main(["bench", name, "-h"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: ram-wsi bench {name} ")
