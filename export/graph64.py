"""A float64 twin of an exported graph, run by ONNX's reference evaluator: exact intermediates.

Every float16/float32 tensor, constant, Cast target and graph input/output becomes float64, and
every sampler (ONNX ``GridSample`` and our ``stn`` plugin ops) runs as ``F.grid_sample`` in
float64, so the twin computes what the graph means, free of float32 rounding. ONNX Runtime has
no float64 kernels for several ops (Resize, for one), hence ONNX's reference evaluator.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from stn_deploy.models.sampling import base_grid
from stn_deploy.plugins import names

__all__ = ["to_float64", "run_float64"]

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_MODES = {v: k for k, v in names.INTERPOLATION_MODES.items()}
_PADDINGS = {v: k for k, v in names.PADDING_MODES.items()}
_DOMAIN = "stn_float64"  # the twin's samplers; the real plugin domain stays untouched


def _double(tensor: TensorProto) -> TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _sample(x, grid, mode: int, padding: int, align: int):
    out = F.grid_sample(torch.from_numpy(np.asarray(x, np.float64)),
                        torch.from_numpy(np.asarray(grid, np.float64)),
                        mode=_MODES[int(mode)], padding_mode=_PADDINGS[int(padding)],
                        align_corners=bool(align))
    return (out.numpy(),)


def _grid(transform, out_height: int, out_width: int, align: int, projective: bool):
    base = base_grid(int(out_height), int(out_width), bool(align), dtype=torch.float64).numpy()
    points = base @ np.asarray(transform, np.float64).transpose(0, 2, 1)
    if projective:
        points = points[..., :2] / points[..., 2:3]
    return points.reshape(len(points), int(out_height), int(out_width), 2)


class _GridSample64(OpRun):
    op_domain = _DOMAIN

    def _run(self, x, grid, interpolation_mode=0, padding_mode=0, align_corners=0):
        return _sample(x, grid, interpolation_mode, padding_mode, align_corners)


def _fused_op(projective: bool) -> type[OpRun]:
    """The float64 op of a fused plugin node: its grid from the transform, then the sampling."""

    class Fused(OpRun):
        op_domain = _DOMAIN

        def _run(self, x, transform, out_height=0, out_width=0, interpolation_mode=0,
                 padding_mode=0, align_corners=0):
            grid = _grid(transform, out_height, out_width, align_corners, projective)
            return _sample(x, grid, interpolation_mode, padding_mode, align_corners)

    return Fused


_OPS = {names.GRID_SAMPLE_OP: _GridSample64, names.AFFINE_GRID_SAMPLE_OP: _fused_op(False),
        names.PROJECTIVE_GRID_SAMPLE_OP: _fused_op(True)}
for _op, _cls in _OPS.items():
    _cls.__name__ = _op  # the evaluator finds implementations by class name


def _as_twin_sampler(node: onnx.NodeProto) -> None:
    """GridSample / stn::* -> the twin's float64 F.grid_sample op, same attributes as ints."""
    if node.op_type == "GridSample" and node.domain in ("", "ai.onnx"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"bilinear").decode()
        mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
        ints = {
            names.ATTR_INTERPOLATION_MODE: names.mode_int(mode),
            names.ATTR_PADDING_MODE: names.padding_int(attrs.get("padding_mode",
                                                                 b"zeros").decode()),
            names.ATTR_ALIGN_CORNERS: int(attrs.get("align_corners", 0)),
        }
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in ints.items())
        node.op_type = names.GRID_SAMPLE_OP
    elif node.domain != names.ONNX_DOMAIN:
        return
    keep = [a for a in node.attribute if a.name not in ("plugin_namespace", "plugin_version")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.domain = _DOMAIN


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float64 twin of ``model`` (same value names, so intermediates can be compared)."""
    model = copy.deepcopy(model)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type in _FLOATS:
            init.CopyFrom(_double(init))
    for node in graph.node:
        _as_twin_sampler(node)
        for attr in list(node.attribute):
            if node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                values = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float64)
                node.attribute.remove(attr)
                node.attribute.append(onnx.helper.make_attribute(
                    "value", numpy_helper.from_array(values)))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _FLOATS:
                attr.t.CopyFrom(_double(attr.t))
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT \
                    and attr.i in _FLOATS:
                attr.i = TensorProto.DOUBLE
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type in _FLOATS:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    if not any(o.domain == _DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(_DOMAIN, 1))
    return model


def run_float64(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                outputs: list[str]) -> dict[str, np.ndarray]:
    """Every value in ``outputs`` computed by the float64 twin of ``model``."""
    twin = to_float64(model)
    del twin.graph.output[:]
    twin.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
    evaluator = ReferenceEvaluator(twin, new_ops=list(_OPS.values()))
    feeds = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v
             for k, v in feeds.items()}
    values = evaluator.run(None, feeds)
    return dict(zip(outputs, values))
