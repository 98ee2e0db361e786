"""judge(): the statistic per kind of output, the relative and fixed bounds, top-1 near-ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stn_deploy.export.judge import judge, output_kind
from stn_deploy.export.tolerances import FP16, FP32, with_fixed_bound


@pytest.mark.parametrize(
    ("name", "shape", "kind"),
    [("logits", (8, 10), "classes"), ("logits", (8, 25, 37), "sequence"),
     ("logits", (8, 3, 32, 100), "image"), ("warped", (8, 1, 28, 28), "image"),
     ("theta", (8, 2, 3), "tensor"), ("logits", (8, 1), "tensor")],
)
def test_output_kinds(name, shape, kind):
    assert output_kind(name, shape) == kind


def test_relative_bound_scales_with_pytorch_fp32_error(rng):
    truth = rng.normal(size=(64, 10))
    torch32 = truth + rng.uniform(-1, 1, truth.shape) * 1e-4  # PyTorch fp32 is 1e-4 off
    ok = judge("logits", truth, truth + 3.5e-4, torch32, FP32)
    assert ok.passed and ok.err_torch == pytest.approx(np.abs(torch32 - truth).max())
    assert ok.bound == pytest.approx(FP32.multiple * ok.err_torch + FP32.floor)
    bad = judge("logits", truth, truth + 5e-4, torch32, FP32)
    assert not bad.passed and "above the bound" in bad.reason


def test_floor_covers_outputs_pytorch_computes_exactly(rng):
    truth = rng.normal(size=(16, 10))
    assert judge("logits", truth, truth + 0.9 * FP32.floor, truth, FP32).passed
    assert not judge("logits", truth, truth + 1.1 * FP32.floor, truth, FP32).passed


def test_image_quantile_tolerates_a_few_flipped_pixels_but_not_many(rng):
    truth = rng.random((4, 1, 32, 32))
    flipped = truth.copy()
    flat = flipped.reshape(-1)
    few = rng.choice(flat.size, 3, replace=False)  # 3 of 4096: below the 0.1% the quantile skips
    flat[few] += 0.5
    check = judge("logits", truth, flipped, truth, FP32)
    assert check.passed and check.max_abs == pytest.approx(0.5) and check.err == 0.0
    many = rng.choice(flat.size, 200, replace=False)
    flat[many] += 0.5
    assert not judge("logits", truth, flipped, truth, FP32).passed


def test_psnr_floor_for_fp16_images(rng):
    truth = rng.random((2, 3, 16, 16))
    noisy = truth + rng.normal(scale=0.05, size=truth.shape)  # ~26 dB
    check = judge("warped", truth, noisy, None, FP16)
    peak = truth.max() - truth.min()
    assert check.psnr == pytest.approx(10 * math.log10(peak**2 / np.mean((noisy - truth) ** 2)))
    assert not check.passed and "PSNR" in check.reason


def test_top1_is_reported_over_decided_samples_and_all(rng):
    truth = rng.normal(size=(100, 10))
    truth[0, :2] = [5.0, 5.0 + 1e-6]  # a tie within the bound: may flip
    got = truth.copy()
    got[0, :2] = got[0, :2][::-1]
    check = judge("logits", truth, got, truth, with_fixed_bound(FP32, 1e-4, 0.0))
    assert check.passed and check.top1 == 1.0 and check.top1_all == pytest.approx(0.99)
    got[1] = -got[1]  # a real flip is a real error
    check = judge("logits", truth, got, truth, with_fixed_bound(FP32, 1e-4, 0.0))
    assert not check.passed and "above the bound" in check.reason
    assert check.top1 < 1.0 and check.top1_all == pytest.approx(0.98)


def test_sequence_top1_is_per_position(rng):
    truth = rng.normal(size=(4, 25, 37))
    got = truth.copy()
    got[0, 3] = -got[0, 3]
    check = judge("logits", truth, got, None, FP16)
    assert check.kind == "sequence" and check.top1_all == pytest.approx(1 - 1 / 100)


def test_non_finite_and_shape_mismatch_fail(rng):
    truth = rng.normal(size=(4, 10))
    got = truth.copy()
    got[1, 1] = np.nan
    check = judge("logits", truth, got, truth, FP32)
    assert not check.passed and "non-finite" in check.reason and check.max_abs == math.inf
    assert "shape" in judge("logits", truth, truth[:2], truth, FP32).reason


def test_user_bound_replaces_the_policy():
    tol = with_fixed_bound(FP32, 1e-3, None)
    assert not tol.relative and tol.atol == 1e-3 and tol.rtol == FP32.rtol
    assert with_fixed_bound(FP16, None, None) is FP16
    assert "user bound" in tol.describe()
