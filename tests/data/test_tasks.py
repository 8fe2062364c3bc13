"""The paper's tasks: centred, translated and cluttered canvases, batched and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.data import (
    TASK_PRESETS,
    EpisodeSampler,
    TaskSpec,
    load_mnist,
    make_batch,
    synthetic_digits,
    task_preset,
)
from ram_wsi.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def pool() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synthetic_digits(200, seed=1)
    return torch.from_numpy(x), torch.from_numpy(y)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def box_of(centers: torch.Tensor, canvas: int) -> torch.Tensor:
    """Top-left pixel (x, y) of the 28x28 box whose centre is ``centers`` in [-1, 1]."""
    corner = (centers + 1.0) / 2.0 * canvas - 14.0
    assert torch.allclose(corner, corner.round(), atol=1e-4)  # integer placement
    return corner.round().long()


def center_of_mass(img: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` centre of mass (x, y) of ``(B, H, W)`` images, pixels covering [p, p + 1)."""
    h, w = img.shape[-2:]
    mass = img.sum((1, 2))
    xs = (img.sum(1) * (torch.arange(w) + 0.5)).sum(1) / mass
    ys = (img.sum(2) * (torch.arange(h) + 0.5)).sum(1) / mass
    return torch.stack([xs, ys], 1)


def reference_cluttered(digits: torch.Tensor, idx: torch.Tensor, task: TaskSpec,
                        seed: int) -> torch.Tensor:
    """A slow, loop-per-sample statement of the protocol, consuming the same random draws."""
    g = gen(seed)
    b, c, k, n = len(idx), task.canvas, task.clutter_size, len(digits)
    top_left = torch.randint(0, c - 28 + 1, (b, 2), generator=g)
    out = torch.zeros(b, c, c)
    for _ in range(task.clutter_pieces):
        shift = torch.randint(0, n - 1, (b,), generator=g)
        crop = torch.randint(0, 28 - k + 1, (b, 2), generator=g)
        at = torch.randint(0, c - k + 1, (b, 2), generator=g)
        for i in range(b):
            other = (int(idx[i]) + 1 + int(shift[i])) % n
            assert other != int(idx[i])
            piece = digits[other, crop[i, 1]:crop[i, 1] + k, crop[i, 0]:crop[i, 0] + k]
            out[i, at[i, 1]:at[i, 1] + k, at[i, 0]:at[i, 0] + k] += piece
    for i in range(b):
        x, y = top_left[i].tolist()
        out[i, y:y + 28, x:x + 28] += digits[idx[i]]
    return out.clamp(0, 1)


# --- TaskSpec ---------------------------------------------------------------------------------

def test_presets_are_the_papers_tasks():
    assert task_preset("mnist28") == TaskSpec("centered", 28)
    assert task_preset("translated60") == TaskSpec("translated", 60)
    assert task_preset("cluttered60") == TaskSpec("cluttered", 60, 4, 8)
    assert task_preset("cluttered100") == TaskSpec("cluttered", 100, 8, 8)
    assert set(TASK_PRESETS) == {"mnist28", "translated60", "cluttered60", "cluttered100"}
    with pytest.raises(ConfigError, match="cluttered100"):
        task_preset("cluttered200")  # the message lists the known presets
    with pytest.raises(TypeError):
        TASK_PRESETS["mine"] = TaskSpec("centered")  # read-only


@pytest.mark.parametrize("kwargs, key", [
    ({"kind": "rotated"}, "task.kind"),
    ({"kind": "translated", "canvas": 27}, "task.canvas"),
    ({"kind": "translated", "canvas": 60.0}, "task.canvas"),
    ({"kind": "cluttered", "canvas": 60, "clutter_pieces": -1}, "task.clutter_pieces"),
    ({"kind": "cluttered", "canvas": 60, "clutter_pieces": 4, "clutter_size": 29},
     "task.clutter_size"),
    ({"kind": "cluttered", "canvas": 60, "clutter_pieces": 4, "clutter_size": 0},
     "task.clutter_size"),
    ({"kind": "translated", "canvas": 60, "clutter_pieces": 4}, "task.clutter_pieces"),
])
def test_taskspec_validation(kwargs, key):
    with pytest.raises(ConfigError) as err:
        TaskSpec(**kwargs)
    assert err.value.key == key


# --- make_batch -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TASK_PRESETS))
def test_shapes_dtypes_range(pool, name):
    task = task_preset(name)
    idx = torch.arange(0, 64)
    canvas, labels, centers = make_batch(*pool, idx, task, gen(0))
    c = task.canvas
    assert canvas.shape == (64, 1, c, c) and canvas.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, pool[1][idx])
    assert centers.shape == (64, 2) and centers.dtype == torch.float32
    assert canvas.min() >= 0.0 and canvas.max() <= 1.0
    half = 14.0 / c * 2.0  # the 28x28 box is fully inside: centre at least 14 px from a border
    assert (centers.abs() <= 1.0 - half + 1e-6).all()


def test_centered_is_the_digit(pool):
    digits, labels = pool
    idx = torch.tensor([5, 0, 199, 5])
    canvas, _, centers = make_batch(digits, labels, idx, task_preset("mnist28"), gen(0))
    assert torch.equal(canvas[:, 0], digits[idx])
    assert torch.equal(centers, torch.zeros(4, 2))
    # On a larger canvas the digit sits in the middle.
    canvas, _, centers = make_batch(digits, labels, idx, TaskSpec("centered", 60), gen(0))
    assert torch.equal(canvas[:, 0, 16:44, 16:44], digits[idx])
    assert canvas.sum() == pytest.approx(float(digits[idx].sum()), rel=1e-6)
    assert torch.allclose(centers, torch.zeros(4, 2))


def test_translated_places_the_whole_digit(pool):
    digits, labels = pool
    idx = torch.arange(100)
    canvas, _, centers = make_batch(digits, labels, idx, task_preset("translated60"), gen(3))
    sums = canvas.sum((1, 2, 3))
    assert torch.allclose(sums, digits[idx].sum((1, 2)), rtol=1e-5)  # nothing clipped or lost
    corner = box_of(centers, 60)
    for i in (0, 17, 99):
        x, y = corner[i].tolist()
        assert torch.equal(canvas[i, 0, y:y + 28, x:x + 28], digits[idx[i]])
    # The returned centre is the digit box's centre: the digit's centre of mass on the canvas
    # is offset from it exactly as the digit's own centre of mass is from its box centre (14).
    centre_px = (centers + 1.0) / 2.0 * 60
    own = center_of_mass(digits[idx]) - 14.0
    assert torch.allclose(center_of_mass(canvas[:, 0]) - centre_px, own, atol=1e-3)
    assert own.abs().mean() < 1.5  # and that offset is small (synthetic digits: +-2 px shift)
    # Positions are spread over the canvas, not stuck in one place.
    assert corner.min() == 0 or corner.max() >= 28
    assert corner.float().std(0).min() > 5


def test_positions_cover_the_full_range(pool):
    digits, labels = pool
    idx = torch.zeros(2000, dtype=torch.long)
    _, _, centers = make_batch(digits, labels, idx, TaskSpec("translated", 40), gen(0))
    corner = box_of(centers, 40)
    assert corner.min() == 0 and corner.max() == 12  # inclusive: 0 .. canvas - 28
    assert torch.bincount(corner[:, 0], minlength=13).min() > 100  # uniform-ish


def test_same_seed_same_batch_other_seed_differs(pool):
    task = task_preset("cluttered60")
    idx = torch.arange(32)
    a = make_batch(*pool, idx, task, gen(7))
    b = make_batch(*pool, idx, task, gen(7))
    c = make_batch(*pool, idx, task, gen(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])


def test_cluttered_without_pieces_is_translated(pool):
    idx = torch.arange(50)
    t = make_batch(*pool, idx, TaskSpec("translated", 60), gen(4))
    c = make_batch(*pool, idx, TaskSpec("cluttered", 60, clutter_pieces=0), gen(4))
    assert all(torch.equal(u, v) for u, v in zip(t, c))


@pytest.mark.parametrize("task", [TaskSpec("cluttered", 60, 4, 8),
                                  TaskSpec("cluttered", 40, 6, 12)])
def test_cluttered_matches_a_per_sample_reference(pool, task):
    digits, labels = pool
    idx = torch.randint(0, len(digits), (24,), generator=gen(1))
    canvas, _, centers = make_batch(digits, labels, idx, task, gen(5))
    expected = reference_cluttered(digits, idx, task, seed=5)
    assert torch.allclose(canvas[:, 0], expected, atol=1e-6)
    # The target is there: the canvas is at least the target everywhere (clutter only adds).
    plain, _, c2 = make_batch(digits, labels, idx, TaskSpec("translated", task.canvas), gen(5))
    assert torch.equal(centers, c2)
    assert (canvas >= plain - 1e-6).all()
    clutter_mass = (canvas - plain).sum((1, 2, 3))
    assert (clutter_mass > 0).float().mean() > 0.8  # most canvases received some clutter


def test_clutter_is_a_crop_of_another_digit():
    # Pool of two: the target (index 0) is blank, so the canvas is exactly the clutter, which
    # must come from digit 1 (uniform 0.25): one piece -> one 8x8 square of 0.25.
    digits = torch.zeros(2, 28, 28)
    digits[1] = 0.25
    labels = torch.tensor([3, 4])
    idx = torch.zeros(64, dtype=torch.long)
    task = TaskSpec("cluttered", 60, clutter_pieces=1, clutter_size=8)
    canvas, _, _ = make_batch(digits, labels, idx, task, gen(2))
    assert torch.allclose(canvas.sum((1, 2, 3)), torch.full((64,), 0.25 * 64))
    nz = canvas[:, 0] > 0
    assert (nz.sum((1, 2)) == 64).all()
    rows, cols = nz.any(2), nz.any(1)
    assert (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all()  # a square, not scattered
    # Overlapping pieces add up and the canvas is clipped at 1.
    digits[1] = 0.75
    many = TaskSpec("cluttered", 30, clutter_pieces=6, clutter_size=28)
    canvas, _, _ = make_batch(digits, labels, idx, many, gen(2))
    assert canvas.max() == 1.0 and (canvas[:, 0, 2:28, 2:28] == 1.0).all()


def test_uint8_pool_equals_float_pool(pool):
    digits, labels = pool
    as_u8 = (digits * 255).round().to(torch.uint8)
    task = task_preset("cluttered60")
    idx = torch.arange(16)
    a = make_batch(as_u8, labels, idx, task, gen(0))
    b = make_batch(as_u8.float() / 255.0, labels, idx, task, gen(0))
    assert all(torch.allclose(u.float(), v.float()) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return load_mnist(SHARED)


def test_real_mnist_translated_centre_is_the_centre_of_mass(mnist):
    x, y = mnist
    sampler = EpisodeSampler(x, y, task_preset("translated60"), seed=0)
    canvas, _, centers = sampler.sample(512)
    offset = center_of_mass(canvas[:, 0]) - (centers + 1.0) / 2.0 * 60
    # MNIST centres mass on pixel index 14, half a pixel past the box centre: within a pixel.
    assert offset.abs().max() < 1.5
    assert torch.allclose(offset.mean(0), torch.tensor([0.5, 0.5]), atol=0.15)


def test_real_mnist_cluttered100(mnist):
    x, y = mnist
    sampler = EpisodeSampler(x, y, task_preset("cluttered100"), seed=0)
    canvas, labels, _ = sampler.sample(1024)
    assert canvas.shape == (1024, 1, 100, 100)
    assert canvas.min() == 0.0 and canvas.max() == 1.0
    assert set(labels.tolist()) == set(range(10))
    # Expected ink without clipping: a target digit plus 8 crops at uniform positions.
    pool = x.astype(np.float64) / 255.0
    target = pool.sum((1, 2)).mean()
    c = np.pad(pool.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    crops = c[:, 8:, 8:] - c[:, :-8, 8:] - c[:, 8:, :-8] + c[:, :-8, :-8]  # (N, 21, 21)
    expected = target + 8 * crops.mean()
    mass = canvas.sum((1, 2, 3)).double().mean().item()
    # Clipping where pieces overlap removes a little; sampling noise is ~1 %.
    assert 0.95 * expected < mass < 1.02 * expected, (mass, expected)


# --- EpisodeSampler ---------------------------------------------------------------------------

def test_sampler_streams_and_resume(pool):
    digits, labels = pool
    task = task_preset("cluttered60")
    s1 = EpisodeSampler(digits, labels, task, seed=3)
    s2 = EpisodeSampler(digits.numpy(), labels.numpy(), task, seed=3)
    a1, a2 = s1.sample(8), s1.sample(8)
    assert not torch.equal(a1[0], a2[0])  # fresh episodes every call
    b1, b2 = s2.sample(8), s2.sample(8)
    assert all(torch.equal(u, v) for u, v in zip(a1 + a2, b1 + b2))
    state = s1.state_dict()
    nxt = s1.sample(8)
    s3 = EpisodeSampler(digits, labels, task, seed=99)
    s3.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(nxt, s3.sample(8)))


def test_fixed_set_is_reproducible(pool):
    digits, labels = pool
    task = task_preset("translated60")
    s1 = EpisodeSampler(digits, labels, task, seed=0)
    s2 = EpisodeSampler(digits, labels, task, seed=12345)
    s2.sample(4)  # the training stream does not affect evaluation sets
    f1, f2 = s1.fixed_set(300, seed=42), s2.fixed_set(300, seed=42)
    assert all(torch.equal(u, v) for u, v in zip(f1, f2))
    assert f1[0].shape == (300, 1, 60, 60)
    # Every pool digit once before any repeats.
    sums = f1[0].sum((1, 2, 3))
    digit_sums = digits.sum((1, 2))
    matched = (sums[:200, None] - digit_sums[None]).abs().argmin(1)
    assert torch.equal(torch.sort(matched).values, torch.arange(200))
    assert torch.equal(f1[1][:200], labels[matched])
    other = s1.fixed_set(300, seed=43)
    assert not torch.equal(f1[0], other[0])


def test_iter_fixed_chunks_concatenate_to_fixed_set(pool):
    digits, labels = pool
    s = EpisodeSampler(digits, labels, TaskSpec("cluttered", 40, 2, 8), seed=0)
    whole = s.fixed_set(1500, seed=1)
    chunks = list(s.iter_fixed(1500, seed=1))
    assert [len(c[0]) for c in chunks] == [1024, 476]
    assert all(torch.equal(torch.cat(p), w) for p, w in zip(zip(*chunks), whole))
    empty = s.fixed_set(0, seed=1)
    assert empty[0].shape == (0, 1, 40, 40) and empty[1].shape == (0,)


def test_sampler_rejects_mismatched_pool(pool):
    digits, labels = pool
    with pytest.raises(ValueError, match="labels"):
        EpisodeSampler(digits, labels[:5], task_preset("mnist28"), seed=0)
    with pytest.raises(ValueError, match="28, 28"):
        make_batch(digits[:, :20], labels, torch.arange(3), task_preset("mnist28"), gen(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(pool):
    digits, labels = pool
    task = task_preset("cluttered60")
    cpu = EpisodeSampler(digits, labels, task, seed=5)
    gpu = EpisodeSampler(digits, labels, task, seed=5, device="cuda")
    a, b = cpu.sample(64), gpu.sample(64)
    assert b[0].device.type == "cuda" and b[1].device.type == "cuda"
    assert all(torch.allclose(u.float(), v.cpu().float()) for u, v in zip(a, b))
    fa, fb = cpu.fixed_set(100, 2), gpu.fixed_set(100, 2)
    assert all(torch.allclose(u.float(), v.cpu().float()) for u, v in zip(fa, fb))
    # A CUDA generator draws on the GPU and still gives a valid, deterministic batch.
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    dcu = digits.cuda()
    c1 = make_batch(dcu, labels.cuda(), torch.arange(8), task, g1)
    c2 = make_batch(dcu, labels.cuda(), torch.arange(8), task, g2)
    assert all(torch.equal(u, v) for u, v in zip(c1, c2))


def test_sample_repeated_is_m_copies_of_fresh_canvases(pool):
    """The paper's M episodes per image: each canvas M times in a row, numbered; the canvases
    are those a plain draw of B / M would give (same generator state)."""
    task = task_preset("cluttered60")
    a = EpisodeSampler(*pool, task, seed=3)
    b = EpisodeSampler(*pool, task, seed=3)
    x, y, image = a.sample_repeated(10, 4)  # 3 canvases: 4 + 4 + 2 episodes
    assert x.shape == (10, 1, 60, 60) and image.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    x0, y0, _ = b.sample(3)
    assert torch.equal(x, x0[image]) and torch.equal(y, y0[image])
    assert not torch.equal(x[0], x[4])  # distinct canvases


def test_mnist_env_groups_are_canvases_unique_across_actors():
    """Actors' batches are concatenated by the learner: their canvas ids must never collide,
    within an actor across calls or between two actors' seeds."""
    from ram_wsi.config import load_config
    from ram_wsi.data.episodes import MnistEnv

    cfg = load_config(None, ["data.source=synthetic", "data.mnist.synthetic_count=200",
                             "data.mnist.task=cluttered60", "data.mnist.episodes_per_image=4"])
    e1, e2 = MnistEnv(cfg, seed=1), MnistEnv(cfg, seed=2)
    g = [e1.episodes(8).slide_idx, e1.episodes(8).slide_idx, e2.episodes(8).slide_idx]
    for ids in g:
        assert len(ids) == 8 and len(set(ids.tolist())) == 2
    assert len(set(np.concatenate(g).tolist())) == 6
