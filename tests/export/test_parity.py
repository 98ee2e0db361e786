"""Export parity over interpolation x padding x align_corners x grid kind, fresh random inputs.

One export per grid kind holds a sampler for every (mode, padding, align_corners) combination,
so the whole table costs five exports; each combination is asserted on its own slice.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stn_deploy.export.onnx_export import export_module
from stn_deploy.export.tolerances import FP16, FP32
from stn_deploy.models.sampling import INTERPOLATION_MODES, PADDING_MODES, WARPS, SamplerConfig

COMBOS = list(itertools.product(INTERPOLATION_MODES, PADDING_MODES, (False, True)))
# Every mode, padding and align_corners value at least once, for the slower grid kinds.
COVER = [
    ("bilinear", "zeros", False), ("bilinear", "border", True), ("bilinear", "reflection", False),
    ("nearest", "zeros", True), ("bicubic", "border", False), ("bicubic", "reflection", True),
]
FULL_TABLE_KINDS = ("affine",)  # the direct-call test runs the full table as well
SIZE = (12, 10)  # non-square, so a transposed grid cannot pass


class AllSamplers(nn.Module):
    """One localisation net feeding one Warp per combination; returns every image, flattened."""

    def __init__(self, kind: str, combos=COMBOS) -> None:
        super().__init__()
        self.combos = list(combos)
        self.warps = nn.ModuleList(WARPS[kind](SIZE, SamplerConfig(*c)) for c in self.combos)
        n = self.warps[0].num_params
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(2 * 14 * 14, n))
        with torch.no_grad():
            self.loc[-1].weight.mul_(0.2)
            # a clear non-identity transform that moves some samples outside the image
            self.loc[-1].bias.copy_(self.warps[0].identity_params() * 1.15 + 0.08)

    def forward(self, x):
        params = self.loc(x)
        return torch.cat([w(x, params)[0].flatten(1) for w in self.warps], dim=1)


class DirectAllSamplers(nn.Module):
    """The same table through F.affine_grid / F.grid_sample called directly (a user's code)."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(2 * 14 * 14, 6))
        with torch.no_grad():
            self.loc[-1].weight.mul_(0.2)
            self.loc[-1].bias.copy_(torch.tensor([1.1, 0.2, 0.1, -0.15, 0.9, 0.05]))

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        outs = []
        for mode, padding, align in COMBOS:
            grid = F.affine_grid(theta, [x.shape[0], 2, *SIZE], align_corners=align)
            outs.append(
                F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)
                .flatten(1)
            )
        return torch.cat(outs, dim=1)


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    return sess.run(None, {"input": x.astype(dtype)})[0].astype(np.float32)


def _assert_table(model, path, x, tol, combos=COMBOS):
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().reshape(len(x), len(combos), -1)
    got = _run(path, x).reshape(ref.shape)
    failures = []
    for i, combo in enumerate(combos):
        err = np.abs(got[:, i] - ref[:, i])
        bound = tol.atol + tol.rtol * np.abs(ref[:, i])
        need = 1.0
        if combo[0] == "nearest":
            # A grid point within rounding of a pixel boundary may pick either neighbour. In fp16
            # the localisation net itself runs in half precision, so theta moves by ~1e-3 and a
            # few tenths of a percent of points switch pixel (measured over 60 draws: mean 0.17%,
            # worst 0.67%); sampling the same grid with the wrong align_corners agrees on only ~60%.
            need = 0.98 if tol is FP16 else 0.995
        ok = (err <= bound).mean() >= need
        if not ok:
            failures.append(f"{combo}: max abs err {err.max():.3g}")
    assert not failures, failures


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng().random((5, 2, 14, 14), dtype=np.float32)


@pytest.mark.parametrize("kind", sorted(WARPS))
def test_warp_kinds_match_pytorch(kind, inputs, tmp_path):
    combos = COMBOS if kind in FULL_TABLE_KINDS else COVER
    model = AllSamplers(kind, combos).eval()
    path = tmp_path / f"{kind}.onnx"
    result = export_module(model, (2, 14, 14), path)
    assert result.contract, result.contract.format()
    _assert_table(model, path, inputs, FP32, combos)


def test_direct_calls_match_pytorch_and_use_matmul_grid(inputs, tmp_path):
    model = DirectAllSamplers().eval()
    path = tmp_path / "direct.onnx"
    export_module(model, (1, 2, 14, 14), path)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "AffineGrid" not in ops and "ReduceSum" not in ops
    assert ops.count("GridSample") == len(COMBOS)
    modes = {onnx.helper.get_attribute_value(a).decode() for n in graph.node
             if n.op_type == "GridSample" for a in n.attribute if a.name == "mode"}
    assert modes == set(INTERPOLATION_MODES)
    _assert_table(model, path, inputs, FP32)


def test_fp16_graph_keeps_grid_in_fp32(inputs, tmp_path):
    model = AllSamplers("projective", COVER).eval()
    path = tmp_path / "half.onnx"
    export_module(model, (2, 14, 14), path, precision="fp16")
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    for node in proto.graph.node:
        if node.op_type == "GridSample":
            assert types[node.input[1]] == onnx.TensorProto.FLOAT, "grid rounded to fp16"
    _assert_table(model, path, inputs, FP16, COVER)
