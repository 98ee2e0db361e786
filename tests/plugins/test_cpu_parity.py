"""The CPU build of the GridSample kernels against F.grid_sample / F.affine_grid / projective_grid.

The CPU library compiles the same __host__ __device__ functions as the CUDA kernels, so these
tables check the kernels' math: every mode x padding x align_corners x dtype x shape, fresh
random inputs each run, through three code paths: the production kernels ("fast": threaded,
vectorised), the one-pixel-at-a-time reference, and the reference's channels-last kHWC8 path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stn_deploy.models.sampling import base_grid, projective_grid
from stn_deploy.plugins import cpu

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
# (N, C, H, W, Ho, Wo): non-square, up- and down-sampling, C = 1, 3, 17, 64.
SHAPES = (
    (2, 1, 9, 13, 17, 11),
    (3, 3, 16, 12, 8, 10),
    (1, 17, 7, 5, 12, 14),
    (2, 64, 10, 8, 6, 9),
)
FP32_ATOL = 1e-5
# fp16 storage: the output is rounded to half (ulp 2^-10 near 1, values reach ~1.3 for bicubic).
FP16_ATOL = 2e-3
SPECIAL = np.array([np.nan, np.inf, -np.inf, 1e10, -1e10, 3e38, -3e38, 1e30, 0.3, -0.7],
                   dtype=np.float32)

table = pytest.mark.parametrize("mode", MODES)
paddings = pytest.mark.parametrize("padding", PADDINGS)
corners = pytest.mark.parametrize("align_corners", [False, True])
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float16])
shapes = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
# fast: the production NCHW kernels; reference: the linear-format reference loop; hwc8: the
# reference's channels-last (TensorRT kHWC8) path.
PATHS = {"fast": {}, "reference": {"kernel": "reference"}, "hwc8": {"layout": "hwc8"}}
layouts = pytest.mark.parametrize("path", list(PATHS))


def _input(rng, shape, dtype):
    n, c, h, w = shape[:4]
    return (rng.random((n, c, h, w), dtype=np.float32) * 2 - 0.5).astype(dtype)


def _reference(x, grid, mode, padding, align_corners):
    xt = torch.from_numpy(x.astype(np.float32))
    return F.grid_sample(xt, torch.as_tensor(grid), mode=mode, padding_mode=padding,
                         align_corners=align_corners).numpy()


def _atol(dtype):
    return FP32_ATOL if dtype == np.float32 else FP16_ATOL


def _near_rounding_boundary(grid, in_hw, align_corners, margin=1e-3):
    """Pixels whose source point lies within ``margin`` pixels of nearest's rounding boundary.

    The fused kernels compute the grid in registers and may differ from F.affine_grid by an
    ulp; at a .5 boundary that flips nearest's choice, so those pixels are left out.
    """
    g = grid.numpy().astype(np.float64)
    near = np.zeros(g.shape[:3], dtype=bool)
    for axis, size in ((0, in_hw[1]), (1, in_hw[0])):
        scale = (size - 1) / 2 if align_corners else size / 2
        u = (g[..., axis] + 1) * scale - (0 if align_corners else 0.5)
        near |= np.abs(np.abs(u - np.floor(u)) - 0.5) < margin
    return near[:, None]


def _assert_close(y, ref, atol, skip=None):
    assert y.shape == ref.shape
    diff = np.abs(y.astype(np.float32) - ref)
    if skip is not None:
        assert skip.mean() < 0.05, "too many pixels sit on a rounding boundary"
        diff = np.where(np.broadcast_to(skip, diff.shape), 0.0, diff)
    assert np.isfinite(y).all()
    assert diff.max() < atol, f"max abs err {diff.max():.3g} >= {atol}"


@table
@paddings
@corners
@dtypes
@shapes
@layouts
def test_grid_sample_matches_torch(rng, mode, padding, align_corners, dtype, shape, path):
    n, _, _, _, ho, wo = shape
    x = _input(rng, shape, dtype)
    grid = (rng.random((n, ho, wo, 2), dtype=np.float32) * 2.6 - 1.3).astype(dtype)
    y = cpu.grid_sample(x, grid, mode, padding, align_corners, **PATHS[path])
    assert y.dtype == dtype
    ref = _reference(x, grid.astype(np.float32), mode, padding, align_corners)
    _assert_close(y, ref, _atol(dtype))


def _theta(rng, n):
    theta = rng.uniform(-1.2, 1.2, size=(n, 2, 3)).astype(np.float32)
    theta[:, :, 2] = rng.uniform(-0.5, 0.5, size=(n, 2))
    return theta


def _homography(rng, n):
    h = np.eye(3, dtype=np.float32)[None] + rng.uniform(-0.3, 0.3, size=(n, 3, 3))
    h[:, 2, :2] = rng.uniform(-0.2, 0.2, size=(n, 2))  # keeps z well away from 0 on [-1, 1]^2
    h[:, 2, 2] = 1.0
    return h.astype(np.float32)


@table
@paddings
@corners
@dtypes
@shapes
@layouts
def test_affine_grid_sample_matches_torch(rng, mode, padding, align_corners, dtype, shape, path):
    n, c, h, w, ho, wo = shape
    x = _input(rng, shape, dtype)
    theta = _theta(rng, n)
    y = cpu.affine_grid_sample(x, theta, (ho, wo), mode, padding, align_corners, **PATHS[path])
    grid = F.affine_grid(torch.from_numpy(theta), [n, c, ho, wo], align_corners=align_corners)
    ref = _reference(x, grid, mode, padding, align_corners)
    skip = _near_rounding_boundary(grid, (h, w), align_corners) if mode == "nearest" else None
    _assert_close(y, ref, _atol(dtype), skip)


@table
@paddings
@corners
@dtypes
@shapes
@layouts
def test_projective_grid_sample_matches_reference(rng, mode, padding, align_corners, dtype,
                                                  shape, path):
    n, _, h, w, ho, wo = shape
    x = _input(rng, shape, dtype)
    hom = _homography(rng, n)
    y = cpu.projective_grid_sample(x, hom, (ho, wo), mode, padding, align_corners,
                                   **PATHS[path])
    base = base_grid(ho, wo, align_corners=align_corners)
    grid = projective_grid(torch.from_numpy(hom), base, (ho, wo))
    ref = _reference(x, grid, mode, padding, align_corners)
    skip = _near_rounding_boundary(grid, (h, w), align_corners) if mode == "nearest" else None
    _assert_close(y, ref, _atol(dtype), skip)


@table
@paddings
@corners
@layouts
def test_non_finite_and_huge_grid_values_match_torch(rng, mode, padding, align_corners, path):
    x = _input(rng, (2, 3, 6, 7), np.float32)
    values = rng.permutation(SPECIAL)
    grid = np.stack(np.meshgrid(values, rng.permutation(SPECIAL)), axis=-1)
    grid = np.broadcast_to(grid, (2, *grid.shape)).copy()
    y = cpu.grid_sample(x, grid, mode, padding, align_corners, **PATHS[path])
    ref = _reference(x, grid, mode, padding, align_corners)
    np.testing.assert_allclose(y, ref, atol=FP32_ATOL, rtol=0, equal_nan=True)
    # Finite outputs are convex-ish combinations of input values: nothing read from outside.
    finite = y[np.isfinite(y)]
    assert np.abs(finite).max() <= 2 * np.abs(x).max()


@table
@paddings
@corners
def test_non_finite_theta_matches_torch(rng, mode, padding, align_corners):
    n, c, h, w = 3, 2, 5, 6
    x = _input(rng, (n, c, h, w), np.float32)
    theta = _theta(rng, n)
    theta[0, 0, 0] = rng.choice(SPECIAL[:3])
    theta[1, 1, 2] = rng.choice(SPECIAL[3:8])
    y = cpu.affine_grid_sample(x, theta, (4, 7), mode, padding, align_corners)
    grid = F.affine_grid(torch.from_numpy(theta), [n, c, 4, 7], align_corners=align_corners)
    ref = _reference(x, grid, mode, padding, align_corners)
    # Image 2 is finite: exact parity. Images 0-1 carry non-finite/huge values: same NaN pattern.
    np.testing.assert_allclose(y[2], ref[2], atol=FP32_ATOL, rtol=0)
    assert (np.isnan(y[:2]) == np.isnan(ref[:2])).all()


def test_projective_zero_depth_is_out_of_range(rng):
    """A homography whose z is 0 at some pixel gives infinite coordinates: no crash, as torch."""
    x = _input(rng, (1, 2, 5, 5), np.float32)
    hom = np.array([[[1, 0, 0], [0, 1, 0], [1, 0, 0]]], dtype=np.float32)  # z = x_t: 0 mid-row
    for mode in MODES:
        y = cpu.projective_grid_sample(x, hom, (3, 5), mode, "zeros", True)
        grid = projective_grid(torch.from_numpy(hom), base_grid(3, 5, True), (3, 5))
        ref = _reference(x, grid, mode, "zeros", True)
        np.testing.assert_allclose(y, ref, atol=FP32_ATOL, rtol=0, equal_nan=True)


def test_bad_arguments_raise(rng):
    x = _input(rng, (1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="interpolation mode"):
        cpu.grid_sample(x, np.zeros((1, 2, 2, 2), np.float32) + 0.1, mode="linear")
    with pytest.raises(ValueError, match="shape"):
        cpu.affine_grid_sample(x, np.ones((2, 2, 3), np.float32), (3, 3))
    with pytest.raises(ValueError, match="float32 or float16"):
        cpu.grid_sample(x.astype(np.float64), np.ones((1, 2, 2, 2)))


def test_library_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("STN_DEPLOY_CACHE", str(tmp_path))
    path = cpu.library_path()
    assert path.parent == tmp_path and path.is_file()
    assert cpu.library_path() == path  # second call reuses it


def test_missing_compiler_is_a_build_error(tmp_path, monkeypatch):
    from stn_deploy.plugins.errors import PluginBuildError

    monkeypatch.setenv("STN_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(PluginBuildError, match="no C\\+\\+ compiler"):
        cpu.library_path()
