"""Plugin flavour of the ONNX export: every warp becomes one node of our TensorRT plugin.

:func:`to_plugin` rewrites a standard-flavour graph, whatever module produced it. Each
``GridSample`` becomes:

- ``STNAffineGridSample(X, theta)`` when its grid is an affine grid of a per-sample [N,2,3]
  matrix (or of the top two rows of an [N,3,3] one, as kornia's ``warp_affine`` builds it);
- ``STNProjectiveGridSample(X, H)`` when its grid is ``(x, y) / z`` of a per-sample [N,3,3]
  homography applied to the target pixels;
- ``STNGridSample(X, grid)`` otherwise (thin-plate splines, flow fields, anything else).

How a grid is recognised does not depend on how the module wrote it (``F.affine_grid``, a
meshgrid with ``matmul``, ``bmm`` or ``einsum``, kornia, our own ``Warp`` classes): the nearest
tensor T of shape [N,2,3] or [N,3,3] that the grid depends on alone (plus constants and shapes)
is cut out with the grid generator between them, that sub-graph is run on a few random
transforms, and its grids are compared with F.affine_grid's (or the homography's) for the
sampler's ``align_corners``. A match within fp32 rounding replaces the whole generator with the
fused node, so no grid tensor exists at run time. Every node lives in domain ``stn`` and carries
``plugin_namespace`` and ``plugin_version`` (TensorRT's parser finds the creator on every
version >= 10.0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from stn_deploy.export import geometry
from stn_deploy.export.geometry import Cut, GraphIndex, Sampler, node_key
from stn_deploy.models.sampling import SamplerConfig, base_grid
from stn_deploy.plugins import names

__all__ = ["to_plugin", "FusionReport", "WarpOutcome", "plugin_attributes", "register_schemas"]

PROBE_BATCH = 3
PROBE_SEED = 20151207  # fixed: the same file exports the same graph every time
# A generator matches when its grids agree with the closed form to this fraction of their range:
# fp32 rounding of the module's own arithmetic stays near 1e-7, any real difference is >= 1e-3.
PROBE_RTOL = 1e-5


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


def _infer_output(op_type: str):
    """ONNX type/shape inference of a plugin node: Y is [N, C, Ho, Wo] with X's element type."""
    unknown = onnx.TensorShapeProto.Dimension

    def infer(ctx) -> None:
        x = ctx.get_input_type(0).tensor_type
        out = onnx.TypeProto()
        out.tensor_type.elem_type = x.elem_type
        if x.HasField("shape") and len(x.shape.dim) == 4:
            if op_type == names.GRID_SAMPLE_OP:
                grid = ctx.get_input_type(1).tensor_type
                grid_dims = list(grid.shape.dim) if grid.HasField("shape") else []
                hw = grid_dims[1:3] if len(grid_dims) == 4 else [unknown(), unknown()]
            else:
                attrs = [ctx.get_attribute(f) for f in (names.ATTR_OUT_HEIGHT,
                                                        names.ATTR_OUT_WIDTH)]
                hw = [unknown(dim_value=a.i) if a else unknown() for a in attrs]
            out.tensor_type.shape.dim.extend([*x.shape.dim[:2], *hw])
        ctx.set_output_type(0, out)

    return infer


def register_schemas() -> None:
    """Declare our three ops to onnx's schema registry (once), for type and shape inference."""
    from onnx.defs import OpSchema

    version = int(names.PLUGIN_VERSION)
    for op_type, fields in names.FIELDS.items():
        if onnx.defs.has(op_type, names.ONNX_DOMAIN):
            continue
        attrs = [OpSchema.Attribute(f, OpSchema.AttrType.INT, required=True) for f in fields]
        attrs += [OpSchema.Attribute(k, OpSchema.AttrType.STRING, required=False)
                  for k in ("plugin_namespace", "plugin_version")]
        second = "grid" if op_type == names.GRID_SAMPLE_OP else "transform"
        schema = OpSchema(
            op_type, names.ONNX_DOMAIN, version,
            doc=f"{op_type} of the stn TensorRT plugin (see plugins/README.md)",
            inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter(second, "G")],
            outputs=[OpSchema.FormalParameter("Y", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "data"),
                              ("G", ["tensor(float)", "tensor(float16)"], "coordinates")],
            attributes=attrs,
        )
        schema.set_type_and_shape_inference_function(_infer_output(op_type))
        onnx.defs.register_schema(schema)


@dataclass(frozen=True)
class WarpOutcome:
    """What became of one GridSample: the plugin op chosen and, if not fused, why not."""

    node: str
    op_type: str
    transform: str | None = None  # the tensor a fused node reads
    reason: str = ""

    @property
    def fused(self) -> bool:
        return self.op_type != names.GRID_SAMPLE_OP


@dataclass(frozen=True)
class FusionReport:
    """All warps of one export, in graph order."""

    warps: tuple[WarpOutcome, ...]

    @property
    def fused(self) -> int:
        return sum(w.fused for w in self.warps)

    def summary(self) -> str:
        text = f"plugin flavour: fused {self.fused} of {len(self.warps)} warp(s)"
        rest = [f"{w.node}: {w.reason}" for w in self.warps if not w.fused]
        return text + ("; not fused: " + "; ".join(rest) if rest else "")


# ---- recognising affine and projective grids --------------------------------------------


def _closed_form(kind: str, matrices: np.ndarray, out_hw, align: bool) -> np.ndarray:
    """The grids F.affine_grid / a homography give for ``matrices`` (float64)."""
    base = base_grid(*out_hw, align_corners=align, dtype=torch.float64).numpy()  # [HW, 3]
    if kind == "projective":
        points = base @ matrices.transpose(0, 2, 1)
        grid = points[..., :2] / points[..., 2:3]
    else:  # affine, from the top two rows
        grid = base @ matrices[:, :2, :].transpose(0, 2, 1)
    return grid.reshape(len(matrices), *out_hw, 2)


def _probe_matrices(rows: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(PROBE_SEED)
    eye = np.eye(3)[:rows]
    noise = rng.normal(size=(PROBE_BATCH, rows, 3))
    if kind == "projective":
        noise[:, 2, :2] *= 0.1  # keep z = h31 x + h32 y + h33 near 1: no pixel near a pole
        return eye + 0.1 * noise
    return eye + 0.3 * noise


def _feeds(index: GraphIndex, cut: Cut, matrices: np.ndarray) -> dict[str, np.ndarray]:
    from onnx.helper import tensor_dtype_to_np_dtype

    feeds = {cut.value: matrices.astype(tensor_dtype_to_np_dtype(index.elem_type(cut.value)))}
    for name in cut.shape_sources:  # only their shapes matter; the batch must match
        dims = index.shape(name) or ()
        shape = [PROBE_BATCH if i == 0 else d for i, d in enumerate(dims)]
        if any(not isinstance(d, int) for d in shape):
            raise ValueError(f"{name} has a dynamic non-batch dimension")
        elem = index.elem_type(name) or onnx.TensorProto.FLOAT
        feeds[name] = np.zeros(shape, dtype=tensor_dtype_to_np_dtype(elem))
    return feeds


def _run_cut(index: GraphIndex, sampler: Sampler, cut: Cut, matrices: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    probe = geometry.submodel(index, cut.nodes, [cut.value, *cut.shape_sources],
                              [sampler.coords])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (grid,) = session.run(None, _feeds(index, cut, matrices))
    return np.asarray(grid, dtype=np.float64)


def _matches(grid: np.ndarray, want: np.ndarray) -> bool:
    if grid.shape != want.shape or not np.isfinite(grid).all():
        return False
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(grid - want).max()) <= PROBE_RTOL * scale


def _recognise(index: GraphIndex, sampler: Sampler) -> tuple[str, Cut, tuple[int, int]] | str:
    """(kind, cut, out_hw) of a fusable grid, or the reason it is not one."""
    cuts = geometry.coordinate_cut(index, sampler)
    if not cuts:
        return "no per-sample [N,2,3] or [N,3,3] matrix that the grid depends on alone"
    for cut in cuts:
        rows = index.shape(cut.value)[1]
        for kind in (("projective", "affine") if rows == 3 else ("affine",)):
            matrices = _probe_matrices(rows, kind)
            try:
                grid = _run_cut(index, sampler, cut, matrices)
            except Exception:  # noqa: BLE001 - an unrunnable probe only means "not fusable"
                break
            if grid.ndim != 4 or grid.shape[-1] != 2:
                break
            out_hw = (int(grid.shape[1]), int(grid.shape[2]))
            if _matches(grid, _closed_form(kind, matrices, out_hw, sampler.align_corners)):
                return kind, cut, out_hw
    tried = ", ".join(repr(c.value) for c in cuts)
    return (f"its grid is neither affine nor projective in {tried} "
            f"(align_corners={int(sampler.align_corners)})")


# ---- rewriting ------------------------------------------------------------------------------


def _unique(graph: onnx.GraphProto, stem: str) -> str:
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    name, k = stem, 0
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    return name


def _top_rows(graph: onnx.GraphProto, matrix: str, at: int) -> tuple[str, list[onnx.NodeProto]]:
    """theta = matrix[:, :2, :] as a Slice (kornia's warp_affine keeps a 3x3 matrix)."""
    out = _unique(graph, f"{matrix}_top_rows")
    consts = {}
    for key, values in (("starts", [0]), ("ends", [2]), ("axes", [1])):
        consts[key] = _unique(graph, f"{out}_{key}")
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64),
                                                         consts[key]))
    node = helper.make_node("Slice", [matrix, consts["starts"], consts["ends"], consts["axes"]],
                            [out], name=f"stn_top_rows_{at}")
    return out, [node]


def _plugin_node(sampler: Sampler, op_type: str, coords: str, out_hw, name: str):
    config = SamplerConfig(sampler.mode, sampler.padding_mode, sampler.align_corners)
    return helper.make_node(op_type, [sampler.image, coords], list(sampler.node.output),
                            name=name, domain=names.ONNX_DOMAIN,
                            **plugin_attributes(config, out_hw))


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing uses (the now-dead grid generators)."""
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {out.name for out in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _ensure_domain(model: onnx.ModelProto) -> None:
    if not any(imp.domain == names.ONNX_DOMAIN for imp in model.opset_import):
        model.opset_import.append(helper.make_opsetid(names.ONNX_DOMAIN,
                                                      int(names.PLUGIN_VERSION)))


def to_plugin(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FusionReport]:
    """A copy of a standard-flavour graph whose GridSample nodes are plugin nodes, fused where
    the grid is affine or projective in a per-sample matrix."""
    register_schemas()
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    index = GraphIndex(model)
    graph = model.graph
    outcomes = []
    replacements: dict[str, list[onnx.NodeProto]] = {}
    for at, sampler in enumerate(s for s in geometry.samplers(model)
                                 if s.node.op_type == "GridSample"):
        name = sampler.node.name or f"stn_warp_{at}"
        found = _recognise(index, sampler)
        if isinstance(found, str):
            replacements[node_key(sampler.node)] = [
                _plugin_node(sampler, names.GRID_SAMPLE_OP, sampler.coords, None, name)]
            outcomes.append(WarpOutcome(name, names.GRID_SAMPLE_OP, reason=found))
            continue
        kind, cut, out_hw = found
        extra: list[onnx.NodeProto] = []
        coords = cut.value
        if kind == "affine" and index.shape(cut.value)[1] == 3:
            coords, extra = _top_rows(graph, cut.value, at)
        op = names.AFFINE_GRID_SAMPLE_OP if kind == "affine" else names.PROJECTIVE_GRID_SAMPLE_OP
        fused = _plugin_node(sampler, op, coords, out_hw, name)
        replacements[node_key(sampler.node)] = [*extra, fused]
        outcomes.append(WarpOutcome(name, op, transform=cut.value))
    nodes = []
    for node in graph.node:
        nodes.extend(replacements.get(node_key(node), [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(graph)
    del graph.value_info[:]  # stale for the removed grids; re-inferred below
    _ensure_domain(model)
    model = onnx.shape_inference.infer_shapes(model)
    return model, FusionReport(tuple(outcomes))
