"""verify(): comparison math, a pass, and a broken export failing with numbers and a suspect."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from stn_deploy.export.onnx_export import export_module
from stn_deploy.export.tolerances import FP16, FP32, for_precision
from stn_deploy.export.verify import compare_logits, random_inputs, verify

from .stn_fixtures import DirectSTN


def test_compare_logits_bounds_and_top1(rng):
    ref = rng.normal(size=(50, 10))
    ok, max_abs, _, top1 = compare_logits(ref, ref + 0.9 * FP32.atol, FP32)
    assert ok and max_abs == pytest.approx(0.9 * FP32.atol) and top1 == 1.0
    ok, max_abs, _, _ = compare_logits(ref, ref + 1.1 * FP32.atol, FP32)
    assert not ok and max_abs == pytest.approx(1.1 * FP32.atol)
    swapped = ref.copy()
    swapped[0] = -swapped[0]  # flips sample 0's argmax, nothing else
    ok, _, _, top1 = compare_logits(ref, swapped, FP16)
    assert not ok and top1 == pytest.approx(49 / 50)
    nan = ref.copy()
    nan[3, 3] = np.nan
    ok, max_abs, _, _ = compare_logits(ref, nan, FP16)
    assert not ok and max_abs == float("inf")


def test_tolerances_live_in_one_table():
    assert for_precision("fp32") is FP32 and for_precision("fp16") is FP16
    with pytest.raises(ValueError, match="fp32"):
        for_precision("int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = DirectSTN(mode="bilinear", padding="border", align_corners=True).eval()
    path = tmp_path_factory.mktemp("v") / "m.onnx"
    export_module(model, (1, 16, 16), path)
    return model, path


def test_verify_passes_and_reports_accuracy(exported):
    model, path = exported
    x = random_inputs((1, 16, 16), 40)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    labels[:4] = (labels[:4] + 1) % 10  # four wrong labels: accuracy must be 90% on both
    result = verify(model, path, x, labels)
    assert result and result.n == 40 and result.max_abs_err < FP32.atol
    assert result.accuracy_torch == result.accuracy_backend == pytest.approx(0.9)
    assert result.summary().startswith("verify PASS ort/fp32 n=40")


def test_a_changed_sampler_fails_and_names_the_gridsample_node(exported):
    model, path = exported
    broken = copy.deepcopy(model)
    broken.align_corners = False  # the export says True: the images differ
    result = verify(broken, path, random_inputs((1, 16, 16), 16))
    assert not result and result.max_abs_err > FP32.atol
    assert "GridSample node" in result.suspect and "align_corners" in result.suspect
    assert "suspect:" in result.summary() and "FAIL" in result.summary()
