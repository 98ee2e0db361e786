"""The production CPU kernels against the reference loop: same values bit for bit, any threads.

The production kernels (src/cpuGridSampleFast.h) rearrange the reference's work (rows over a
thread pool, chunks of pixels in vectorised loops) but call the same shared functions and sum
in the same order, so every output value must equal the reference's exactly: same bits, zeros'
signs included; NaN where the reference has NaN (a NaN's sign bit is not part of its value).
"""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from stn_deploy.plugins import cpu

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
# (N, C, H, W, Ho, Wo): a row longer than one chunk (128 pixels), a 1x1 input, one output row,
# and a plane whose rows are not a multiple of the vector width.
SHAPES = ((2, 3, 9, 13, 5, 300), (3, 2, 1, 1, 4, 6), (2, 5, 17, 11, 1, 37), (1, 1, 40, 33, 21, 19))
SPECIAL = np.array([np.nan, np.inf, -np.inf, 1e10, -1e10, 3e38, 1e30, -1.0, 1.0, 1.0000001,
                    0.999999, -0.5], dtype=np.float32)


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    bits_a = np.where(nan_a, 0, a).view(np.uint32)
    bits_b = np.where(nan_b, 0, b).view(np.uint32)
    return bool((nan_a == nan_b).all() and (bits_a == bits_b).all())


def _coordinates(rng, source, n, ho, wo):
    if source == "grid":
        grid = rng.uniform(-1.3, 1.3, size=(n, ho, wo, 2)).astype(np.float32)
        special = rng.random(grid.shape) < 0.08
        grid[special] = rng.choice(SPECIAL, size=int(special.sum()))
        return grid
    rows = 2 if source == "affine" else 3
    m = rng.uniform(-1.2, 1.2, size=(n, rows, 3)).astype(np.float32)
    if source == "projective":
        m[:, 2] = [0.1, -0.1, 1.0]
    m[0, 0, 0] = rng.choice(SPECIAL)  # one image with a non-finite or huge entry
    return m


def _sample(source, x, coords, ho, wo, mode, padding, ac, **kw):
    if source == "grid":
        return cpu.grid_sample(x, coords, mode, padding, ac, **kw)
    fn = cpu.affine_grid_sample if source == "affine" else cpu.projective_grid_sample
    return fn(x, coords, (ho, wo), mode, padding, ac, **kw)


@pytest.mark.parametrize("source", ["grid", "affine", "projective"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_fast_kernels_equal_the_reference_bit_for_bit(rng, source, mode, padding, align_corners):
    for shape in SHAPES:
        n, c, h, w, ho, wo = shape
        x = rng.uniform(-1, 2, size=(n, c, h, w)).astype(np.float32)
        x[0, 0, 0, 0] = -0.0
        coords = _coordinates(rng, source, n, ho, wo)
        ref = _sample(source, x, coords, ho, wo, mode, padding, align_corners,
                      kernel="reference")
        for threads in (1, 2, 3):
            y = _sample(source, x, coords, ho, wo, mode, padding, align_corners, threads=threads)
            assert _same_values(y, ref), (shape, threads, np.abs(y - ref)[np.isfinite(ref)].max())


def test_large_batches_use_threads_and_agree(rng):
    # Enough work (> 16k output values per thread) that the pool really splits it.
    x = rng.random((16, 3, 48, 48), dtype=np.float32)
    theta = np.tile(np.array([[0.9, 0.3, 0.1], [-0.3, 0.9, 0.0]], np.float32), (16, 1, 1))
    ref = cpu.affine_grid_sample(x, theta, (48, 48), kernel="reference")
    for threads in (1, 2, 4, 7):
        assert _same_values(cpu.affine_grid_sample(x, theta, (48, 48), threads=threads), ref)


def test_concurrent_callers_get_their_own_results(rng):
    """Calls from many threads at once: one owns the pool, the others run on their own thread."""
    inputs = [rng.random((8, 2, 40, 40), dtype=np.float32) for _ in range(6)]
    grids = [rng.uniform(-1, 1, size=(8, 40, 40, 2)).astype(np.float32) for _ in range(6)]
    expected = [cpu.grid_sample(x, g, kernel="reference") for x, g in zip(inputs, grids)]
    results: dict[int, list[bool]] = {i: [] for i in range(6)}

    def worker(i: int) -> None:
        for _ in range(20):
            y = cpu.grid_sample(inputs[i], grids[i], threads=2)
            results[i].append(_same_values(y, expected[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(len(r) == 20 and all(r) for r in results.values())


def _sample_in_child(args):
    x, theta = args
    return cpu.affine_grid_sample(x, theta, (40, 40), threads=2)


def test_pool_works_in_a_forked_child(rng):
    """A worker process forked after the pool started (serve --workers) gets its own pool."""
    x = rng.random((16, 3, 40, 40), dtype=np.float32)
    theta = np.tile(np.array([[1.0, 0.2, 0.0], [-0.2, 1.0, 0.1]], np.float32), (16, 1, 1))
    here = cpu.affine_grid_sample(x, theta, (40, 40), threads=2)  # the parent's pool is running
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.apply_async(_sample_in_child, ((x, theta),)).get(timeout=120)
    assert _same_values(there, here)


def test_empty_batch_and_bad_arguments(rng):
    x = rng.random((0, 2, 5, 5), dtype=np.float32)
    assert cpu.affine_grid_sample(x, np.zeros((0, 2, 3), np.float32), (3, 4)).shape == (0, 2, 3, 4)
    x = rng.random((1, 1, 4, 4), dtype=np.float32)
    y = np.empty((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="rejected its arguments"):
        cpu.sample_into(1, x, np.zeros((1, 2, 3), np.float32), y, 7, 0, 0, 1)  # mode 7
    with pytest.raises(ValueError, match="rejected its arguments"):
        cpu.sample_into(5, x, np.zeros((1, 2, 3), np.float32), y, 0, 0, 0, 1)  # source 5
    with pytest.raises(ValueError, match="kernel"):
        cpu.grid_sample(x, np.zeros((1, 2, 2, 2), np.float32), kernel="turbo")
