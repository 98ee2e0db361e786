"""Plugin flavour of the ONNX export: warps become nodes of our TensorRT GridSample plugin.

The exporter calls three things (export/onnx_export.py):

- ``swap_warps(model)``: a deep copy whose ``Warp`` modules emit one plugin node each
  (``STNAffineGridSample`` for affine/attention, ``STNProjectiveGridSample`` for homographies,
  ``STNGridSample`` over the computed grid for TPS and any other warp). Eagerly the twins
  compute exactly what the originals do, so tracing and verification see the same values.
- ``custom_translation_table()``: ``aten.grid_sampler(_2d)`` -> ``STNGridSample``, for user
  modules that call ``F.grid_sample`` directly.
- ``fuse(proto)``: the standard flavour's MatMul affine grid feeding an ``STNGridSample``
  becomes one ``STNAffineGridSample`` (no grid tensor at run time); anything else is left as is.

Every node lives in domain ``stn`` and carries ``plugin_namespace`` and ``plugin_version``, so
TensorRT's ONNX parser finds the creator on every version >= 10.0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from stn_deploy.models.sampling import (
    AffineWarp,
    ProjectiveWarp,
    SamplerConfig,
    Warp,
    base_grid,
    grid_sample,
)
from stn_deploy.plugins import names

__all__ = ["swap_warps", "custom_translation_table", "fuse", "plugin_attributes"]


def plugin_attributes(config: SamplerConfig, out_hw: tuple[int, int] | None = None) -> dict:
    """The node attributes of a plugin op: sampler enums, optional output size, lookup keys."""
    attrs: dict = {}
    if out_hw is not None:
        attrs[names.ATTR_OUT_HEIGHT] = int(out_hw[0])
        attrs[names.ATTR_OUT_WIDTH] = int(out_hw[1])
    attrs[names.ATTR_INTERPOLATION_MODE] = names.mode_int(config.mode)
    attrs[names.ATTR_PADDING_MODE] = names.padding_int(config.padding_mode)
    attrs[names.ATTR_ALIGN_CORNERS] = int(config.align_corners)
    attrs["plugin_namespace"] = names.PLUGIN_NAMESPACE
    attrs["plugin_version"] = names.PLUGIN_VERSION
    return attrs


def _emit(op_type: str, x: Tensor, coords: Tensor, attrs: dict, out_hw) -> Tensor:
    return torch.onnx.ops.symbolic(
        f"{names.ONNX_DOMAIN}::{op_type}",
        (x, coords),
        attrs,
        dtype=x.dtype,
        shape=(x.shape[0], x.shape[1], int(out_hw[0]), int(out_hw[1])),
        version=int(names.PLUGIN_VERSION),
    )


def _fused_forward(op_type: str) -> Callable:
    def forward(self: Warp, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        theta = self.to_theta(params)
        if not torch.onnx.is_in_onnx_export():
            return grid_sample(x, self.grid(theta), self.config), theta
        attrs = plugin_attributes(self.config, self.out_hw)
        return _emit(op_type, x, theta.to(x.dtype), attrs, self.out_hw), theta

    return forward


def _grid_forward(self: Warp, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    theta = self.to_theta(params)
    grid = self.grid(theta)
    if not torch.onnx.is_in_onnx_export():
        return grid_sample(x, grid, self.config), theta
    attrs = plugin_attributes(self.config)
    return _emit(names.GRID_SAMPLE_OP, x, grid.to(x.dtype), attrs, grid.shape[1:3]), theta


_TWINS: dict[type, type] = {}


def _twin_class(cls: type[Warp]) -> type[Warp]:
    """A subclass of the warp's own class whose forward emits the plugin node under export."""
    if cls not in _TWINS:
        if issubclass(cls, AffineWarp):
            forward, op = _fused_forward(names.AFFINE_GRID_SAMPLE_OP), names.AFFINE_GRID_SAMPLE_OP
        elif issubclass(cls, ProjectiveWarp):
            op = names.PROJECTIVE_GRID_SAMPLE_OP
            forward = _fused_forward(op)
        else:
            forward, op = _grid_forward, names.GRID_SAMPLE_OP
        _TWINS[cls] = type(f"Plugin{cls.__name__}", (cls,), {"forward": forward, "plugin_op": op})
    return _TWINS[cls]


def swap_warps(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` whose Warp modules export as plugin nodes (same eager values)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Warp) and not hasattr(type(module), "plugin_op"):
            module.__class__ = _twin_class(type(module))
    return model


def _register_schemas() -> None:
    """Declare our three ops to onnx's schema registry (once), so onnxscript can emit them."""
    from onnx.defs import OpSchema

    version = int(names.PLUGIN_VERSION)
    for op_type, fields in names.FIELDS.items():
        if onnx.defs.has(op_type, names.ONNX_DOMAIN):
            continue
        attrs = [OpSchema.Attribute(f, OpSchema.AttrType.INT, required=True) for f in fields]
        attrs += [OpSchema.Attribute(k, OpSchema.AttrType.STRING, required=False)
                  for k in ("plugin_namespace", "plugin_version")]
        second = "grid" if op_type == names.GRID_SAMPLE_OP else "transform"
        onnx.defs.register_schema(OpSchema(
            op_type, names.ONNX_DOMAIN, version,
            doc=f"{op_type} of the stn TensorRT plugin (see plugins/README.md)",
            inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter(second, "G")],
            outputs=[OpSchema.FormalParameter("Y", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "data"),
                              ("G", ["tensor(float)", "tensor(float16)"], "coordinates")],
            attributes=attrs,
        ))


def _grid_sample_plugin(input, grid, interpolation_mode: int, padding_mode: int,
                        align_corners: bool):
    """aten::grid_sampler(_2d) -> stn::STNGridSample."""
    from onnxscript import values

    _register_schemas()
    stn = values.Opset(names.ONNX_DOMAIN, int(names.PLUGIN_VERSION))
    config = SamplerConfig(
        mode={v: k for k, v in names.INTERPOLATION_MODES.items()}[int(interpolation_mode)],
        padding_mode={v: k for k, v in names.PADDING_MODES.items()}[int(padding_mode)],
        align_corners=bool(align_corners),
    )
    return getattr(stn, names.GRID_SAMPLE_OP)(input, grid, **plugin_attributes(config))


def custom_translation_table() -> dict[Callable, Callable]:
    """Translation-table entries of the plugin flavour (merged over the standard table)."""
    aten = torch.ops.aten
    return {
        aten.grid_sampler.default: _grid_sample_plugin,
        aten.grid_sampler_2d.default: _grid_sample_plugin,
    }


# ---- fuse: MatMul affine grid + STNGridSample -> STNAffineGridSample ----------------------


class _Graph:
    """Producers, constants and use counts of a graph, for local pattern matching."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name == "value_ints":
                        self.consts[node.output[0]] = np.array(attr.ints, dtype=np.int64)

    def node(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _match_affine_grid(g: _Graph, grid: str, align_corners: bool):
    """(theta name, (h, w)) when ``grid`` = Reshape(MatMul(base, Transpose(theta)), [-1,h,w,2])."""
    reshape = g.node(grid, "Reshape")
    if reshape is None or reshape.input[1] not in g.consts:
        return None
    shape = g.consts[reshape.input[1]].tolist()
    matmul = g.node(reshape.input[0], "MatMul")
    if len(shape) != 4 or shape[3] != 2 or matmul is None:
        return None
    h, w = int(shape[1]), int(shape[2])
    base = g.consts.get(matmul.input[0])
    transpose = g.node(matmul.input[1], "Transpose")
    if base is None or transpose is None or list(_attr(transpose, "perm", [])) != [0, 2, 1]:
        return None
    expected = base_grid(h, w, align_corners=align_corners).numpy()
    if base.shape != expected.shape or not np.allclose(base, expected, atol=1e-6):
        return None
    return transpose.input[0], (h, w)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing uses (the now-dead grid chains)."""
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {out.name for out in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def fuse(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fuse MatMul affine grids into their STNGridSample consumers; identity if none match."""
    proto = copy.deepcopy(proto)
    g = _Graph(proto.graph)
    fused = 0
    for index, node in enumerate(list(proto.graph.node)):
        if node.domain != names.ONNX_DOMAIN or node.op_type != names.GRID_SAMPLE_OP:
            continue
        align = bool(_attr(node, names.ATTR_ALIGN_CORNERS, 0))
        match = _match_affine_grid(g, node.input[1], align)
        if match is None:
            continue
        theta, (h, w) = match
        config = SamplerConfig(
            mode={v: k for k, v in names.INTERPOLATION_MODES.items()}[
                int(_attr(node, names.ATTR_INTERPOLATION_MODE, 0))],
            padding_mode={v: k for k, v in names.PADDING_MODES.items()}[
                int(_attr(node, names.ATTR_PADDING_MODE, 0))],
            align_corners=align,
        )
        new = helper.make_node(
            names.AFFINE_GRID_SAMPLE_OP, [node.input[0], theta], list(node.output),
            name=node.name or f"stn_affine_grid_sample_{index}", domain=names.ONNX_DOMAIN,
            **plugin_attributes(config, (h, w)),
        )
        position = list(proto.graph.node).index(node)
        proto.graph.node.remove(node)
        proto.graph.node.insert(position, new)
        fused += 1
    if fused:
        _prune(proto.graph)
    return proto
