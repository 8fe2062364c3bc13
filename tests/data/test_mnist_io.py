"""The idx reader, MNIST loading, pooling, splitting and the verified download.

Small idx files are written into ``tmp_path`` (raw and gzipped, whole and broken) so every error
path is exercised with real files; ``../shared/data/mnist`` (the official 60,000 training digits
and the first 8,000 official test digits) checks real data.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from ram_wsi.data import download_mnist, load_mnist, load_pool, read_idx, split_indices
from ram_wsi.data import mnist as mnist_mod
from ram_wsi.errors import ConfigError, DataError

# Reached beside the project root, never by an absolute path: CI lays shared/ beside its clone.
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def idx_bytes(arr: np.ndarray, *, dtype_code: int = 0x08, magic: int | None = None) -> bytes:
    """An idx file's bytes for ``arr`` (uint8), with optional wrong dtype code or magic."""
    head = bytes([0, 0, dtype_code, arr.ndim]) if magic is None else magic.to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + dims + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool | None = None) -> Path:
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n, dtype=np.uint8))


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray,
                gz: bool) -> None:
    ext = ".gz" if gz else ""
    write(directory / f"{split}-images-idx3-ubyte{ext}", idx_bytes(images))
    write(directory / f"{split}-labels-idx1-ubyte{ext}", idx_bytes(labels))


# --- real data -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_train() -> tuple[np.ndarray, np.ndarray]:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return load_mnist(SHARED, "train")


def test_shared_train_split_is_the_official_60000(shared_train):
    images, labels = shared_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int64
    # ../shared/data/README.md: byte-identical to LeCun's training set (md5 of the idx file).
    raw = gzip.decompress((SHARED / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    assert raw[16:] == images.tobytes()
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                            5851, 5949]
    assert images.max() == 255 and images.min() == 0
    assert 0.12 < images.mean() / 255 < 0.14  # MNIST's ink fraction
    # MNIST centres each digit's mass on pixel *index* 14, i.e. half a pixel right of and below
    # the box centre (continuous coordinate 14.5, pixels covering [p, p + 1)).
    yy, xx = np.mgrid[0:28, 0:28] + 0.5
    w = images[:500].astype(np.float64)
    com_x = (w * xx).sum((1, 2)) / w.sum((1, 2))
    com_y = (w * yy).sum((1, 2)) / w.sum((1, 2))
    assert abs(com_x.mean() - 14.5) < 0.1 and abs(com_y.mean() - 14.5) < 0.1


def test_shared_test_split_is_8000_official_test_digits():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    images, labels = load_mnist(SHARED, "test")
    assert images.shape == (8000, 28, 28)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels).tolist() == [773, 905, 834, 803, 788, 723, 756, 813, 787, 818]
    assert int(images[0].sum()) == 18454


def test_shared_pool_is_train_then_test(shared_train):
    images, labels = load_pool(SHARED)
    assert images.shape == (68000, 28, 28)
    assert np.array_equal(images[:60000], shared_train[0])
    assert labels[60000:70000][:3].tolist() == [7, 2, 1]


def test_read_idx_real_labels_file():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    labels = read_idx(SHARED / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels.dtype == np.uint8 and labels[0] == 5
    labels[0] = 3  # the result is writable (not a view of immutable bytes)


# --- the four-file layout ---------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_four_file_layout_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    tr, te = fake_split(rng, 30), fake_split(rng, 12)
    write_split(tmp_path, "train", *tr, gz=gz)
    write_split(tmp_path, "t10k", *te, gz=gz)
    images, labels = load_mnist(tmp_path, "train")
    assert np.array_equal(images, tr[0]) and np.array_equal(labels, tr[1].astype(np.int64))
    assert labels.dtype == np.int64
    for alias in ("t10k", "test"):
        images, labels = load_mnist(tmp_path, alias)
        assert np.array_equal(images, te[0]) and np.array_equal(labels, te[1])
    pool_x, pool_y = load_pool(tmp_path)
    assert pool_x.shape == (42, 28, 28)
    assert np.array_equal(pool_x, np.concatenate([tr[0], te[0]]))
    assert np.array_equal(pool_y, np.concatenate([tr[1], te[1]]))


def test_raw_file_is_found_without_gz_suffix_and_gzip_is_detected_by_content(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = fake_split(rng, 5)
    # Gzip data under a raw name is still read: recognised by its signature.
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gz=True)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels), gz=False)
    x, y = load_mnist(tmp_path)
    assert np.array_equal(x, images) and np.array_equal(y, labels)


def test_unknown_split_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        load_mnist(tmp_path, "validation")


# --- broken files -----------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_truncated_pixels(tmp_path, gz):
    images = np.zeros((100, 28, 28), np.uint8)
    data = idx_bytes(images)[:16 + 100]
    p = write(tmp_path / ("x-idx3-ubyte" + (".gz" if gz else "")), data)
    with pytest.raises(DataError) as err:
        read_idx(p)
    assert err.value.cause == "truncated: expected 78400 bytes of pixels, found 100"
    assert err.value.path == str(p) and str(p) in str(err.value)


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(28 * 28 * 4, dtype=np.uint8).reshape(4, 28, 28)))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated gzip stream"):
        read_idx(p)


def test_truncated_header(tmp_path):
    p = write(tmp_path / "h", bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(DataError, match="header needs 16 bytes, found 8"):
        read_idx(p)
    p = write(tmp_path / "tiny", b"\x00\x00")
    with pytest.raises(DataError, match="truncated: 2 bytes"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = write(tmp_path / "l", idx_bytes(np.arange(5, dtype=np.uint8)) + b"\x01\x02")
    with pytest.raises(DataError, match="2 trailing bytes after the 5 bytes of labels"):
        read_idx(p)


def test_bad_magic(tmp_path):
    labels = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.arange(3, dtype=np.uint8)))
    with pytest.raises(DataError) as err:
        read_idx(labels, kind="images")
    assert err.value.cause == "bad magic 0x00000801 (expected 2051 for images)"
    html = write(tmp_path / "page", b"<html><body>404</body></html>")
    with pytest.raises(DataError, match="bad magic 0x3c68746d .*not an idx file"):
        read_idx(html)
    rank2 = write(tmp_path / "r2", idx_bytes(np.zeros((2, 3), np.uint8)))
    with pytest.raises(DataError, match="bad magic 0x00000802"):
        read_idx(rank2)


def test_wrong_dtype_code(tmp_path):
    p = write(tmp_path / "f", idx_bytes(np.zeros((1, 28, 28), np.uint8), dtype_code=0x0D))
    with pytest.raises(DataError, match="dtype code 0x0d, expected 0x08"):
        read_idx(p)


def test_not_gzip_data(tmp_path):
    p = write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(3, dtype=np.uint8)),
              gz=False)
    with pytest.raises(DataError, match="not gzip data"):
        read_idx(p)


def test_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    blob[12:20] = b"\xff" * 8  # garbage in the deflate stream
    p = tmp_path / "c.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        read_idx(p)
    assert "gzip" in err.value.cause


def test_missing_file_and_unreadable_path(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nope")
    assert err.value.cause == "missing"
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path)  # a directory: an OSError inside, a DataError outside


def test_label_count_mismatch(tmp_path):
    rng = np.random.default_rng(2)
    images, _ = fake_split(rng, 6)
    write_split(tmp_path, "train", images, np.arange(5, dtype=np.uint8), gz=True)
    with pytest.raises(DataError, match="5 labels for 6 images"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = fake_split(rng, 6)
    labels[4] = 12
    write_split(tmp_path, "train", images, labels, gz=False)
    with pytest.raises(DataError, match="label 12 at index 4"):
        load_mnist(tmp_path)


def test_wrong_image_size(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 32, 32), np.uint8)))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError, match="32x32"):
        load_mnist(tmp_path)


def test_missing_directory_and_missing_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "absent")
    assert err.value.path == str(tmp_path / "absent")
    assert "train-images-idx3-ubyte[.gz]" in err.value.cause
    with pytest.raises(DataError, match="missing directory"):
        load_pool(tmp_path / "absent")
    with pytest.raises(DataError, match="no MNIST idx files"):
        load_pool(tmp_path)
    # Images without labels: the message names what was expected.
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path)
    assert err.value.path == str(tmp_path / "train-labels-idx1-ubyte")
    assert "train-labels-idx1-ubyte.gz" in err.value.cause
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_pool(tmp_path)  # half a split is an error, not silently skipped


# --- splitting --------------------------------------------------------------------------------

def test_split_indices_stratified_disjoint_covering_deterministic():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 1003)
    tr, va, te = split_indices(labels, 0.1, 0.2, seed=5)
    allidx = np.concatenate([tr, va, te])
    assert len(allidx) == 1003 and np.array_equal(np.sort(allidx), np.arange(1003))
    assert len(va) == round(0.1 * 1003) and len(te) == round(0.2 * 1003)
    for part in (tr, va, te):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    counts = np.bincount(labels, minlength=10)
    for part, frac in ((va, 0.1), (te, 0.2)):
        per_class = np.bincount(labels[part], minlength=10)
        assert np.all(np.abs(per_class - frac * counts) <= 1.0)
    again = split_indices(labels, 0.1, 0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    other = split_indices(labels, 0.1, 0.2, seed=6)
    assert not np.array_equal(va, other[1])


def test_split_indices_plain_and_edge_cases():
    tr, va, te = split_indices(50, 0.2, 0.0, seed=0)
    assert (len(tr), len(va), len(te)) == (40, 10, 0)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(50))
    assert not np.array_equal(va, np.arange(40, 50))  # shuffled, not the tail
    for bad in ((-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)):
        with pytest.raises(ConfigError):
            split_indices(10, *bad, seed=0)


# --- download ---------------------------------------------------------------------------------

def _fake_mirror(tmp_path: Path) -> tuple[str, dict[str, tuple[int, str]]]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {}
    for i, name in enumerate(["a-labels-idx1-ubyte.gz", "b-labels-idx1-ubyte.gz"]):
        data = gzip.compress(idx_bytes(np.arange(i + 3, dtype=np.uint8)))
        (mirror / name).write_bytes(data)
        files[name] = (len(data), hashlib.sha256(data).hexdigest())
    return mirror.as_uri() + "/", files


def test_download_verifies_and_writes(tmp_path):
    url, files = _fake_mirror(tmp_path)
    out = download_mnist(tmp_path / "out", base_url=url, files=files)
    assert out == tmp_path / "out"
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "mirror" / name).read_bytes()
    assert read_idx(out / "b-labels-idx1-ubyte.gz").tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no temp files left


def test_download_md5_checksums_are_accepted(tmp_path):
    url, files = _fake_mirror(tmp_path)
    md5 = {n: (None, hashlib.md5((tmp_path / "mirror" / n).read_bytes()).hexdigest())
           for n in files}
    download_mnist(tmp_path / "out", base_url=url, files=md5)
    assert all((tmp_path / "out" / n).is_file() for n in files)


def test_download_checksum_mismatch_writes_nothing(tmp_path):
    url, files = _fake_mirror(tmp_path)
    name = next(iter(files))
    files[name] = (files[name][0], "0" * 64)
    with pytest.raises(DataError, match="checksum mismatch: sha256") as err:
        download_mnist(tmp_path / "out", base_url=url, files=files)
    assert err.value.path == url + name
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor a temp file

    files[name] = (files[name][0] + 1, files[name][1])
    with pytest.raises(DataError, match="size"):
        download_mnist(tmp_path / "out", base_url=url, files=files)


def test_download_failure_and_skip_of_verified_files(tmp_path, monkeypatch):
    url, files = _fake_mirror(tmp_path)
    with pytest.raises(DataError, match="download failed"):
        download_mnist(tmp_path / "out", base_url=url + "missing/", files=files)
    download_mnist(tmp_path / "out", base_url=url, files=files)

    def no_network(url: str, dest: Path, timeout: float) -> None:
        raise AssertionError(f"fetched {url} although a verified copy exists")

    monkeypatch.setattr(mnist_mod, "_fetch", no_network)
    download_mnist(tmp_path / "out", base_url=url, files=files)  # nothing fetched

    # A corrupted local copy is fetched again (through the fetch function).
    name = next(iter(files))
    (tmp_path / "out" / name).write_bytes(b"junk")
    calls = []

    def copy(url: str, dest: Path, timeout: float) -> None:
        calls.append(url)
        dest.write_bytes((tmp_path / "mirror" / name).read_bytes())

    monkeypatch.setattr(mnist_mod, "_fetch", copy)
    download_mnist(tmp_path / "out", base_url=url, files=files)
    assert calls == [url + name]
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "mirror" / name).read_bytes()


def test_default_checksums_are_the_official_sha256():
    assert set(mnist_mod.MNIST_FILES) == {
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    size, digest = mnist_mod.MNIST_FILES["t10k-labels-idx1-ubyte.gz"]
    assert size == 4542
    assert digest == "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
