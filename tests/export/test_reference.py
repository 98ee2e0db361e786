"""The float64 reference: modules that fix float32 inside forward still run in float64."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stn_deploy.export.reference import reference_outputs


class FixesFloat32(nn.Module):
    """Builds a float32 constant inside forward, as the published TPS rectifiers do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        bias = torch.ones(x.shape[0], 4).float() / 3  # 1/3 is inexact in float32
        return self.fc(x.flatten(1)) + torch.zeros(1, dtype=torch.float32) + bias


class Float32Only(nn.Module):
    def forward(self, x):
        if x.dtype != torch.float32:
            raise TypeError(f"float32 input expected, got {x.dtype}")
        return x.flatten(1)[:, :3]


def test_float32_requests_inside_forward_run_in_float64():
    model = FixesFloat32().eval()
    x = np.random.default_rng().random((5, 1, 2, 4), dtype=np.float32)
    ref = reference_outputs(model, x, ["logits"])
    assert ref.dtype == "float64" and ref.truth["logits"].dtype == np.float64
    with torch.no_grad():
        exact = model.double()(torch.from_numpy(x).double())  # what float64 should give
    exact = exact.numpy() - 1 / 3 + 1 / 3  # the float64 1/3, not float32's
    assert np.abs(ref.truth["logits"] - exact).max() < 1e-12
    assert np.abs(ref.float32["logits"] - exact).max() > 1e-9  # float32 really is different


def test_the_reference_is_the_float64_module_for_ordinary_modules():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    x = np.random.default_rng().random((4, 1, 2, 4), dtype=np.float32)
    ref = reference_outputs(model, x, ["logits"])
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x).double()).numpy()
    assert ref.note == "" and np.array_equal(ref.truth["logits"], want)


def test_a_module_that_cannot_run_in_float64_falls_back_and_says_why():
    x = np.random.default_rng().random((2, 1, 2, 4), dtype=np.float32)
    ref = reference_outputs(Float32Only(), x, ["logits"])
    assert ref.dtype == "float32" and "float32 input expected" in ref.note
    assert ref.truth is ref.float32
