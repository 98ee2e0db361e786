"""The grid generators agree with F.affine_grid and with each other at the identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stn_deploy.models import sampling as S


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw", [(28, 28), (5, 7), (60, 33)])
def test_base_grid_matches_affine_grid(hw, align_corners):
    ours = S.base_grid(*hw, align_corners=align_corners)[:, :2]
    ref = F.affine_grid(torch.eye(2, 3)[None], [1, 1, *hw], align_corners=align_corners)
    torch.testing.assert_close(ours, ref.reshape(-1, 2), atol=1e-6, rtol=0)
    assert torch.all(S.base_grid(*hw, align_corners=align_corners)[:, 2] == 1)


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_homography_equals_affine(align_corners):
    theta = torch.randn(4, 2, 3) * 0.3 + torch.eye(2, 3)
    homography = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0]).expand(4, 1, 3)], dim=1)
    out_hw = (17, 23)
    base = S.base_grid(*out_hw, align_corners=align_corners)
    got = S.projective_grid(homography, base, out_hw)
    ref = S.affine_grid(theta, out_hw, align_corners)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_projective_divides_by_z():
    h = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0.5, 0.25, 2.0]]])
    base = S.base_grid(3, 4, align_corners=True)
    grid = S.projective_grid(h, base, (3, 4)).reshape(-1, 2)
    z = 0.5 * base[:, 0] + 0.25 * base[:, 1] + 2.0
    torch.testing.assert_close(grid, base[:, :2] / z[:, None])


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_interpolates_its_control_points(align_corners):
    warp = S.TPSWarp((32, 32), S.SamplerConfig(align_corners=align_corners), grid_size=(3, 3))
    theta = warp.control[None] + 0.1 * torch.randn(2, 9, 2)
    # Evaluate the spline at the control points themselves: it must reproduce the sources.
    kernel = S.tps_kernel(warp.control, torch.cat([warp.control, torch.ones(9, 1)], dim=1))
    torch.testing.assert_close(kernel @ theta, theta, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", sorted(S.WARPS))
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_params_give_identity_warp(kind, align_corners):
    cfg = S.SamplerConfig(align_corners=align_corners)
    warp = S.WARPS[kind]((19, 21), cfg)
    params = warp.identity_params().expand(3, -1)
    grid = warp.grid(warp.to_theta(params))
    ref = S.affine_grid(torch.eye(2, 3).expand(3, 2, 3), (19, 21), align_corners)
    torch.testing.assert_close(grid, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", sorted(S.INTERPOLATION_MODES))
@pytest.mark.parametrize("padding", sorted(S.PADDING_MODES))
def test_warp_forward_is_grid_sample(mode, padding):
    cfg = S.SamplerConfig(mode=mode, padding_mode=padding, align_corners=False)
    warp = S.AffineWarp((11, 13), cfg)
    x = torch.randn(2, 3, 20, 24)
    params = torch.randn(2, 6)
    out, theta = warp(x, params)
    ref = F.grid_sample(
        x, F.affine_grid(params.view(2, 2, 3), [2, 3, 11, 13], align_corners=False),
        mode=mode, padding_mode=padding, align_corners=False,
    )
    assert theta.shape == (2, 2, 3)
    torch.testing.assert_close(out, ref)


def test_sampler_config_rejects_bad_values():
    with pytest.raises(ValueError, match="linear"):
        S.SamplerConfig(mode="linear")
    with pytest.raises(ValueError, match="padding"):
        S.SamplerConfig(padding_mode="fill")
    assert S.INTERPOLATION_MODES == {"bilinear": 0, "nearest": 1, "bicubic": 2}
    assert S.PADDING_MODES == {"zeros": 0, "border": 1, "reflection": 2}
