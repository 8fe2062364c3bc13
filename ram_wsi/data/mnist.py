"""MNIST from its idx files: read, validate, pool, split, and (optionally) download.

Why a hand-written reader: the idx format is 8-16 header bytes and a raw payload, and a reader we
own can say *what* is wrong with a file (truncated download, an html error page saved as ``.gz``,
labels from another split) instead of surfacing a ``struct.error`` deep inside a training run.
Every problem a user can cause becomes a :class:`~ram_wsi.errors.DataError` naming the file.

The project trains on a *pool* of digits and splits it itself (:func:`load_pool`,
:func:`split_indices`), so a directory with only some of the four files is still useful.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError, DataError
from ..io_utils import atomic_path

__all__ = [
    "DEFAULT_BASE_URL",
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "MNIST_DIR_ENV",
    "MNIST_FILES",
    "default_mnist_dir",
    "download_mnist",
    "has_split",
    "load_mnist",
    "load_pool",
    "read_idx",
    "split_indices",
]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UBYTE = 0x08

DEFAULT_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# name -> (bytes, sha256) of the official archives (the same values are published by torchvision,
# TensorFlow Datasets and others). The size is checked first: a wrong size is a clearer message.
MNIST_FILES: Mapping[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz":
        (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz":
        (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz":
        (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz":
        (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

MNIST_DIR_ENV = "RAM_WSI_MNIST"  # environment variable naming the default idx directory

_KINDS = {IMAGES_MAGIC: ("images", 3), LABELS_MAGIC: ("labels", 1)}
_SPLITS = {"train": "train", "t10k": "t10k", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if they are gzip data; every failure as a DataError.

    Gzip is recognised by its signature, not the name, so a gunzipped file that kept its ``.gz``
    name is the only mismatch reported ("not gzip data"): raw idx data starts with two zero
    bytes and can never be mistaken for gzip.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            if head != b"\x1f\x8b":
                if path.suffix == ".gz":
                    raise DataError(path, "not gzip data (the name ends in .gz but the file does "
                                          "not start with the gzip signature; a failed download?)")
                return head + fh.read()
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(path, "missing") from None
    except EOFError:
        raise DataError(path, "truncated gzip stream (the download did not finish?)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(path, f"corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None


def read_idx(path: str | Path, *, kind: Literal["images", "labels"] | None = None) -> np.ndarray:
    """Read one MNIST idx file, raw or gzipped (recognised by content; a ``*.gz`` name that is
    not gzip data is an error, since it usually means a failed download).

    Args:
        path: the file.
        kind: ``"images"`` requires magic 2051 (``N x rows x cols``), ``"labels"`` magic 2049
            (``N``); ``None`` accepts either.

    Returns:
        A writable ``uint8`` array shaped as the header says.

    Raises:
        DataError: missing file, not gzip, bad magic, wrong dtype code, impossible dimensions,
            or a payload whose length differs from the header's product (truncated or padded).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(path, f"truncated: {len(data)} bytes, not even an idx header")
    magic = int.from_bytes(data[:4], "big")
    expected = {"images": IMAGES_MAGIC, "labels": LABELS_MAGIC}
    if kind is not None and kind not in expected:
        raise ValueError(f"kind must be 'images', 'labels' or None, got {kind!r}")
    want_magic = (f"{expected[kind]} for {kind}" if kind is not None else
                  f"{IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels")
    # Magic = two zero bytes, a dtype code, the rank. The dtype is checked on its own first so a
    # float idx file is reported as such rather than as an unexplained magic number.
    if data[0] != 0 or data[1] != 0:
        raise DataError(path, f"bad magic 0x{magic:08x} (expected {want_magic}); not an idx file")
    if data[2] != _UBYTE:
        raise DataError(path, f"dtype code 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    if magic not in _KINDS or (kind is not None and magic != expected[kind]):
        raise DataError(path, f"bad magic 0x{magic:08x} (expected {want_magic})")
    what, ndim = _KINDS[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, f"truncated: header needs {header} bytes, found {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if what == "images" and (dims[1] < 1 or dims[2] < 1):
        raise DataError(path, f"impossible image size {dims[1]}x{dims[2]}")
    want = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header
    noun = "pixels" if what == "images" else "labels"
    if have < want:
        raise DataError(path, f"truncated: expected {want} bytes of {noun}, found {have}")
    if have > want:
        raise DataError(path, f"{have - want} trailing bytes after the {want} bytes of {noun} "
                              f"the header announces")
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header).reshape(dims)


def _candidates(stem: str) -> list[str]:
    # The official names, gzipped or not, and the dotted names some unpackers produce.
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find(directory: Path, stem: str) -> Path | None:
    for name in _candidates(stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _split_name(split: str) -> str:
    try:
        return _SPLITS[split]
    except KeyError:
        raise ConfigError(f"unknown MNIST split {split!r}; use 'train', 't10k' or 'test'",
                          key="split") from None


def load_mnist(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split from a directory of idx files.

    Args:
        directory: holds ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``.
        split: ``"train"``, ``"t10k"``, or ``"test"`` (an alias of ``"t10k"``).

    Returns:
        ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Raises:
        DataError: directory or file missing (the message lists the names looked for), a
            malformed file, image and label counts that differ, or labels outside 0..9.
    """
    directory = Path(directory)
    name = _split_name(split)
    img_stem, lab_stem = f"{name}-images-idx3-ubyte", f"{name}-labels-idx1-ubyte"
    if not directory.is_dir():
        raise DataError(directory, f"missing directory; expected it to hold {img_stem}[.gz] and "
                                   f"{lab_stem}[.gz] (ram_wsi.data.download_mnist fetches them)")
    paths = {}
    for stem in (img_stem, lab_stem):
        found = _find(directory, stem)
        if found is None:
            raise DataError(directory / stem, "missing; looked for "
                            + ", ".join(_candidates(stem)) + f" in {directory}")
        paths[stem] = found
    images = read_idx(paths[img_stem], kind="images")
    labels = read_idx(paths[lab_stem], kind="labels")
    if images.shape[1:] != (28, 28):
        raise DataError(paths[img_stem], f"images are {images.shape[1]}x{images.shape[2]}, "
                                         "MNIST digits are 28x28")
    if len(images) != len(labels):
        raise DataError(paths[lab_stem], f"{len(labels)} labels for {len(images)} images in "
                                         f"{paths[img_stem].name}")
    if len(labels) and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(paths[lab_stem], f"label {int(labels[bad])} at index {bad} is not a digit "
                                         "0..9")
    return images, labels.astype(np.int64)


def default_mnist_dir() -> Path | None:
    """``$RAM_WSI_MNIST``, else ``../shared/data/mnist`` beside the working directory or the
    repository, if it exists."""
    env = os.environ.get(MNIST_DIR_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), here):
        p = base.parent / "shared" / "data" / "mnist"
        if p.is_dir():
            return p
    return None


def has_split(directory: Path, name: str) -> bool:
    """Whether ``directory`` holds either file of split ``name`` (``train`` or ``t10k``)."""
    return any(_find(directory, f"{name}-{part}") is not None
               for part in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def load_pool(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Every digit in ``directory``: the train split, then t10k, whichever are present.

    Why a pool: the project draws its own train/validation/test split from all available digits
    (:func:`split_indices`), so a train-only directory and the full four-file layout are used the
    same way. A split with only one of its two files present is an error, not silently skipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "missing directory; expected MNIST idx files "
                                   "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                                   "and optionally the t10k pair)")
    parts = [load_mnist(directory, s) for s in ("train", "t10k") if has_split(directory, s)]
    if not parts:
        raise DataError(directory, "no MNIST idx files; expected train-images-idx3-ubyte[.gz] "
                                   "and train-labels-idx1-ubyte[.gz] (or the t10k pair)")
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _check_fraction(value: float, key: str) -> None:
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"must be in [0, 1), got {value!r}", key=key)


def _quotas(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class sizes summing to ``round(fraction * total)`` (largest-remainder rounding), so a
    stratified split has the requested total size, not one rounding error per class."""
    exact = counts * fraction
    base = np.floor(exact).astype(np.int64)
    short = round(fraction * int(counts.sum())) - int(base.sum())
    if short > 0:
        # Stable sort on the negated remainder: ties go to the lower class, deterministically.
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:short]] += 1
    return np.minimum(base, counts)


def split_indices(labels: np.ndarray | int, val_fraction: float, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint, covering train/validation/test index sets, the same for the same ``seed``.

    Args:
        labels: ``(N,)`` class labels -- the split is then stratified, each class split in the
            same proportions, so a small validation set still sees every digit -- or an ``int``
            ``N`` for a plain random split.
        val_fraction, test_fraction: fractions of ``N``; each in ``[0, 1)``, sum below 1.
        seed: the split depends on nothing else (not on global RNG state).

    Returns:
        ``(train, val, test)`` sorted ``int64`` index arrays.
    """
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be below 1, got "
                          f"{val_fraction} + {test_fraction}", key="val_fraction")
    rng = np.random.default_rng(seed)
    if isinstance(labels, (int, np.integer)):
        if labels < 0:
            raise ValueError(f"n must be >= 0, got {labels}")
        labels = np.zeros(int(labels), dtype=np.int64)  # one class: a plain random split
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_test = _quotas(counts, test_fraction)
    n_val = np.minimum(_quotas(counts, val_fraction), counts - n_test)
    # Sort by (class, random key): each class becomes a contiguous run in random order, and its
    # first n_test go to test, the next n_val to validation -- no loop over classes or samples.
    order = np.lexsort((rng.random(n), inverse))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(start, counts)
    cls_test, cls_val = n_test[inverse], n_val[inverse]
    is_test = rank < cls_test
    is_val = ~is_test & (rank < cls_test + cls_val)
    is_train = ~(is_test | is_val)
    return (np.flatnonzero(is_train), np.flatnonzero(is_val), np.flatnonzero(is_test))


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Copy ``url`` to ``dest``. Module-level so tests can replace it; file:// URLs work too."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, size: int | None, digest: str) -> str | None:
    """``None`` if ``path`` matches, else why not. ``digest`` is sha256 (64 hex) or md5 (32)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    algo = {64: "sha256", 32: "md5"}.get(len(digest))
    if algo is None:
        raise ValueError(f"checksum {digest!r} is neither sha256 nor md5 hex")
    actual = _digest(path, algo)
    if actual != digest.lower():
        return f"{algo} {actual}, expected {digest.lower()}"
    return None


def download_mnist(directory: str | Path, *, base_url: str = DEFAULT_BASE_URL,
                   timeout: float = 60.0,
                   files: Mapping[str, tuple[int | None, str]] | None = None) -> Path:
    """Download the four MNIST archives into ``directory`` and verify each one.

    A file already present with the right checksum is not fetched again. Each download goes to a
    temporary sibling and is renamed into place only after its size and checksum match, so an
    interrupted or corrupted download never leaves a file that :func:`load_mnist` would trust.

    Args:
        directory: created if needed.
        base_url: mirror prefix; ``base_url + name`` is fetched (``file://`` URLs work).
        timeout: seconds per network operation.
        files: ``name -> (size or None, sha256 or md5 hex)``; defaults to :data:`MNIST_FILES`.

    Returns:
        ``directory`` as a Path.

    Raises:
        DataError: the download failed, or a file's size or checksum does not match.
    """
    directory = Path(directory)
    files = MNIST_FILES if files is None else files
    if not base_url.endswith("/"):
        base_url += "/"
    for name, (size, digest) in files.items():
        dest = directory / name
        if dest.is_file() and _verify(dest, size, digest) is None:
            continue
        url = base_url + name
        with atomic_path(dest) as tmp:
            try:
                _fetch(url, tmp, timeout)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # URLError/HTTPError are OSErrors; ValueError: a malformed URL.
                reason = getattr(exc, "reason", None) or exc
                raise DataError(url, f"download failed: {reason}") from None
            problem = _verify(tmp, size, digest)
            if problem is not None:
                raise DataError(url, f"checksum mismatch: {problem}; nothing written to {dest}")
    return directory

