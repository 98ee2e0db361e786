"""Plugin-flavour export: each Warp kind becomes plugin nodes; ORT with our custom ops agrees.

Exports go through ``export_module(flavour="plugin")``: the standard export, then the graph
pass ``to_plugin`` that recognises affine and projective grids; the graphs then run on ONNX
Runtime with the CPU build of the kernels registered as ``stn`` custom ops and are compared with
eager PyTorch on fresh random inputs.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stn_deploy.export import plugin_flavour as pf
from stn_deploy.models.sampling import (
    AffineWarp,
    AttentionWarp,
    ProjectiveWarp,
    SamplerConfig,
    TPSWarp,
)
from stn_deploy.plugins import names, ort_ops
from stn_deploy.runtime.ort import OrtSession

IN_CHW = (2, 10, 12)
OUT_HW = (7, 9)
ORT_ATOL = 1e-4


class WarpNet(nn.Module):
    """A tiny STN: a linear localisation net (identity-initialised) and one Warp.

    A homography's perspective row (h31, h32) is kept small: with the other parameters' spread
    (std ~0.3 over 240 inputs), z = h31 x + h32 y + 1 reaches 0 for a few percent of random
    models, the source points run off to thousands of image widths, and float32's spacing there
    alone moves the output by up to 1e-1 (measured: PyTorch fp32 vs fp64 of the same model).
    That is the model's conditioning, not the plugin's accuracy, so the test avoids it.
    """

    def __init__(self, warp) -> None:
        super().__init__()
        self.loc = nn.Linear(int(np.prod(IN_CHW)), warp.num_params)
        nn.init.normal_(self.loc.weight, std=0.02)
        noise = 0.1 * torch.randn(warp.num_params)
        if warp.kind == "projective":
            with torch.no_grad():
                self.loc.weight[6:] *= 0.05  # |h31| + |h32| stays below ~0.2: z in [0.8, 1.2]
            noise[6:] *= 0.2
        with torch.no_grad():
            self.loc.bias.copy_(warp.identity_params() + noise)
        self.warp = warp

    def forward(self, x):
        warped, _ = self.warp(x, self.loc(x.flatten(1)))
        return warped


class RawGridSample(nn.Module):
    """A user module calling F.affine_grid / F.grid_sample directly (or a non-affine grid)."""

    def __init__(self, affine: bool, mode: str, padding: str, align_corners: bool) -> None:
        super().__init__()
        self.affine, self.mode, self.padding, self.ac = affine, mode, padding, align_corners
        self.loc = nn.Linear(int(np.prod(IN_CHW)), 6)
        nn.init.normal_(self.loc.weight, std=0.02)

    def forward(self, x):
        theta = self.loc(x.flatten(1)).reshape(-1, 2, 3) + torch.tensor([[1.0, 0, 0], [0, 1, 0]])
        grid = F.affine_grid(theta, [x.shape[0], 1, *OUT_HW], align_corners=self.ac)
        if not self.affine:
            grid = torch.tanh(1.3 * grid)  # no longer affine: must stay STNGridSample
        return F.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding,
                             align_corners=self.ac)


CASES = {
    "affine": (lambda: WarpNet(AffineWarp(OUT_HW, SamplerConfig("bilinear", "zeros", False))),
               names.AFFINE_GRID_SAMPLE_OP),
    "attention": (lambda: WarpNet(AttentionWarp(OUT_HW, SamplerConfig("bicubic", "border", True))),
                  names.AFFINE_GRID_SAMPLE_OP),
    "projective": (lambda: WarpNet(ProjectiveWarp(OUT_HW,
                                                  SamplerConfig("bilinear", "reflection", False))),
                   names.PROJECTIVE_GRID_SAMPLE_OP),
    "tps": (lambda: WarpNet(TPSWarp(OUT_HW, SamplerConfig("bilinear", "border", True))),
            names.GRID_SAMPLE_OP),
    "raw-affine": (lambda: RawGridSample(True, "bicubic", "reflection", True),
                   names.AFFINE_GRID_SAMPLE_OP),
    "raw-generic": (lambda: RawGridSample(False, "nearest", "zeros", False), names.GRID_SAMPLE_OP),
}


def export_plugin(model: nn.Module, tmp_path):
    from stn_deploy.export.onnx_export import export_module

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        result = export_module(model, IN_CHW, tmp_path / "p.onnx", flavour="plugin")
    return onnx.load(str(result.path)), result


def plugin_nodes(proto):
    return [n for n in proto.graph.node if n.domain == names.ONNX_DOMAIN]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_flavour_nodes_and_ort_parity(case, tmp_path):
    factory, op_type = CASES[case]
    model = factory().eval()
    proto, result = export_plugin(model, tmp_path)
    assert result.fusion.fused == int(op_type != names.GRID_SAMPLE_OP)
    nodes = plugin_nodes(proto)
    assert [n.op_type for n in nodes] == [op_type]
    node = nodes[0]
    attrs = {a.name: a for a in node.attribute}
    assert set(attrs) == {*names.FIELDS[op_type], "plugin_namespace", "plugin_version"}
    assert attrs["plugin_namespace"].s.decode() == names.PLUGIN_NAMESPACE
    assert attrs["plugin_version"].s.decode() == names.PLUGIN_VERSION
    if op_type != names.GRID_SAMPLE_OP:
        assert (attrs[names.ATTR_OUT_HEIGHT].i, attrs[names.ATTR_OUT_WIDTH].i) == OUT_HW
    assert ("stn", 1) in {(o.domain, o.version) for o in proto.opset_import}
    if op_type != names.GRID_SAMPLE_OP:  # fused: no grid is computed anywhere in the graph
        assert not {"MatMul", "Div"} & {n.op_type for n in proto.graph.node}
    x = np.random.default_rng().standard_normal((3, *IN_CHW)).astype(np.float32)  # batch != 2
    with OrtSession(proto.SerializeToString(), session_hooks=[ort_ops.register]) as session:
        got = session.infer({"input": x})["logits"]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (3, IN_CHW[0], *OUT_HW)
    err = np.abs(got - want).max()
    assert err < ORT_ATOL, f"{case}: max abs err {err:.3g}"


def test_unfused_warps_say_why(tmp_path):
    _, result = export_plugin(CASES["raw-generic"][0]().eval(), tmp_path)
    (warp,) = result.fusion.warps
    assert warp.op_type == names.GRID_SAMPLE_OP and not warp.fused
    assert "neither affine nor projective" in warp.reason
    assert "fused 0 of 1 warp(s); not fused:" in result.summary()


def test_to_plugin_leaves_plugin_graphs_alone(tmp_path):
    proto, _ = export_plugin(CASES["tps"][0]().eval(), tmp_path)
    again, report = pf.to_plugin(proto)
    assert report.warps == ()
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in proto.graph.node]


def test_export_module_plugin_flavour(tmp_path):
    onnx_export = pytest.importorskip("stn_deploy.export.onnx_export")
    model = CASES["affine"][0]().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        result = onnx_export.export_module(model, IN_CHW, tmp_path / "m.onnx", flavour="plugin")
    import onnx

    proto = onnx.load(str(result.path))
    assert [n.op_type for n in plugin_nodes(proto)] == [names.AFFINE_GRID_SAMPLE_OP]
    x = np.random.default_rng().standard_normal((2, *IN_CHW)).astype(np.float32)
    with OrtSession(str(result.path), session_hooks=[ort_ops.register]) as session:
        got = next(iter(session.infer({session.input_names[0]: x}).values()))
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < ORT_ATOL
