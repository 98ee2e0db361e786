"""The CUDA kernels themselves on a GPU (skipped without one): the PyTorch-extension build of
gridSampleKernel.cu against F.grid_sample on CUDA, fp32 and fp16, NCHW and kHWC8.

The full table and the timings live in bench/gpu_check.py (make gpu-check); this is the pytest
face of the same check so a GPU CI job fails on a wrong kernel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stn_deploy.plugins.cpu import SOURCE_DIR

pytestmark = pytest.mark.gpu
MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    from torch.utils.cpp_extension import load

    return load(
        name="stn_gridsample_ext_test",
        sources=[str(SOURCE_DIR / "torchExtension.cpp"), str(SOURCE_DIR / "gridSampleKernel.cu")],
        extra_include_paths=[str(SOURCE_DIR)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17"],
        build_directory=str(tmp_path_factory.mktemp("ext")),
    )


def _hwc8(x):
    n, c, h, w = x.shape
    out = x.new_zeros(n, h, w, -(-c // 8) * 8)
    out[..., :c] = x.permute(0, 2, 3, 1)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("align_corners", [False, True])
def test_kernels_match_torch_on_cuda(ext, dtype, mode, padding, align_corners):
    stream = torch.cuda.current_stream().cuda_stream
    n, c, h, w, ho, wo = 3, 17, 13, 9, 11, 15
    x = (torch.rand(n, c, h, w, device="cuda") * 2 - 0.5).to(dtype)
    grid = (torch.rand(n, ho, wo, 2, device="cuda") * 2.6 - 1.3).to(dtype)
    want = F.grid_sample(x.float(), grid.float(), mode=mode, padding_mode=padding,
                         align_corners=align_corners)
    m, p = MODES[mode], PADDINGS[padding]
    got = ext.grid_sample(x, grid, m, p, align_corners, stream)
    assert (got.float() - want).abs().max() < TOL[dtype]
    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.15, 1.1, -0.05]], device="cuda").repeat(n, 1, 1)
    agrid = F.affine_grid(theta, [n, c, ho, wo], align_corners=align_corners)
    want = F.grid_sample(x.float(), agrid, mode=mode, padding_mode=padding,
                         align_corners=align_corners)
    got = ext.affine_grid_sample(x, theta, ho, wo, m, p, align_corners, stream)
    diff = (got.float() - want).abs()
    if mode == "nearest":  # a grid point 1 ulp from a .5 boundary may round the other way
        assert (diff > TOL[dtype]).float().mean() < 0.01
    else:
        assert diff.max() < TOL[dtype]
    if dtype == torch.float16:
        out = ext.hwc8(0, _hwc8(x), grid, c, ho, wo, m, p, align_corners, stream)
        assert (out[..., c:] == 0).all()
        want = F.grid_sample(x.float(), grid.float(), mode=mode, padding_mode=padding,
                             align_corners=align_corners)
        assert (out[..., :c].permute(0, 3, 1, 2).float() - want).abs().max() < TOL[dtype]


def test_nan_grid_never_reads_out_of_bounds(ext):
    stream = torch.cuda.current_stream().cuda_stream
    x = torch.rand(2, 3, 5, 6, device="cuda")
    vals = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e10, -1e10, 3e38, 0.3],
                        device="cuda")
    grid = torch.stack(torch.meshgrid(vals, vals, indexing="xy"), -1)[None].repeat(2, 1, 1, 1)
    for m in MODES.values():
        for p in PADDINGS.values():
            y = ext.grid_sample(x, grid, m, p, False, stream)
            torch.cuda.synchronize()  # an illegal address would surface here
            finite = y[torch.isfinite(y)]
            assert finite.numel() == 0 or finite.abs().max() <= 2 * x.abs().max()
