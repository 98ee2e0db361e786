"""Where an exported STN warps: its samplers and the geometric path that feeds each of them.

Works on any ONNX graph, whatever module produced it (our zoo, ``F.affine_grid``, a meshgrid
with ``bmm`` or ``einsum``, kornia, a flow field): nothing here knows our own classes.

- :func:`samplers` lists the sampling nodes: ONNX ``GridSample`` and our ``stn`` plugin ops.
- :func:`geometric_path` is everything that computes one sampler's coordinates from the
  *transform parameters*: walking back from the grid (or theta) input, it stops at learned
  layers (convolutions, ``Gemm``, normalisations, and any node reading a trainable weight) and at
  ``Shape``. The nodes it passes through (a TPS's constant matrix products, an identity grid
  plus a flow, kornia's normalisation and inverse, a homography's divide) are the grid generator:
  the part that must stay fp32 in an fp16 graph.
- :func:`coordinate_cut` finds, for one sampler, the nearest tensor ``T`` [N,2,3] or [N,3,3]
  that the grid depends on alone (plus constants and shapes): the candidate transform.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import helper

from stn_deploy.plugins import names

__all__ = [
    "GraphIndex",
    "Sampler",
    "samplers",
    "samplers_of",
    "geometric_path",
    "coordinate_cut",
    "const_producers",
    "submodel",
    "attribute",
    "node_key",
    "LEARNED_OPS",
    "SHAPE_OPS",
]

# Layers whose output is "the localisation net's result", never grid arithmetic.
LEARNED_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LSTM", "GRU", "RNN",
    "MatMulInteger", "QLinearMatMul",
})
# Nodes whose output depends only on their input's shape, not its values.
SHAPE_OPS = frozenset({"Shape", "Size"})
_MODE_NAMES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
               "bicubic": "bicubic", "cubic": "bicubic"}
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
_ENUM_MODES = {v: k for k, v in names.INTERPOLATION_MODES.items()}
_ENUM_PADDINGS = {v: k for k, v in names.PADDING_MODES.items()}


def node_key(node: onnx.NodeProto) -> str:
    """A node's identity: its first output, unique in an SSA graph (protobuf wrappers are not
    stable Python objects, so ``id()`` cannot identify a node)."""
    return node.output[0]


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value (bytes decoded), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


class GraphIndex:
    """Producers, consumers, constants and declared types of one graph (read-only views)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.position: dict[str, int] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for i, node in enumerate(graph.node):
            self.position[node_key(node)] = i
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input} - set(self.initializers)
        self.graph_outputs = {v.name for v in graph.output}
        self.types: dict[str, onnx.TypeProto] = {}
        for value in (*graph.value_info, *graph.input, *graph.output):
            self.types[value.name] = value.type
        for init in graph.initializer:
            self.types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type,
                                                                           list(init.dims)))
        self._const: dict[str, bool] = {}

    def is_const(self, name: str) -> bool:
        """True when ``name`` is an initializer, a Constant, or computed from constants only."""
        if not name or name in self.initializers:
            return True
        if name in self._const:
            return self._const[name]
        node = self.producer.get(name)
        if node is None:  # a graph input
            result = False
        elif node.op_type == "Constant" or (node.op_type in ("ConstantOfShape",)
                                            and all(self.is_const(i) for i in node.input)):
            result = True
        else:
            result = bool(node.input) and all(self.is_const(i) for i in node.input)
        self._const[name] = result
        return result

    def elem_type(self, name: str) -> int:
        """The ONNX element type of a value (0 when unknown)."""
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0

    def shape(self, name: str) -> tuple | None:
        """Declared dims (int, or the symbol's name / None for unknown), or None."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        return tuple(dims)

    def name_of(self, node: onnx.NodeProto) -> str:
        return node.name or f"<{node.op_type} -> {node.output[0]}>"


@dataclass(frozen=True)
class Sampler:
    """One sampling node: which op, what it reads, and F.grid_sample's three knobs."""

    node: onnx.NodeProto
    image: str
    coords: str  # the grid (GridSample, STNGridSample) or the transform (fused plugin ops)
    kind: str  # "grid", "affine" or "projective"
    mode: str
    padding_mode: str
    align_corners: bool

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def samplers(model: onnx.ModelProto) -> list[Sampler]:
    """Every GridSample and stn plugin node of the main graph, in graph order."""
    return samplers_of(model.graph.node)


def samplers_of(nodes: Iterable[onnx.NodeProto]) -> list[Sampler]:
    """The sampling nodes among ``nodes``, in their order."""
    found = []
    kinds = {names.GRID_SAMPLE_OP: "grid", names.AFFINE_GRID_SAMPLE_OP: "affine",
             names.PROJECTIVE_GRID_SAMPLE_OP: "projective"}
    for node in nodes:
        if node.op_type == "GridSample" and node.domain in ("", "ai.onnx"):
            mode = _MODE_NAMES.get(attribute(node, "mode", "bilinear"), "nearest")
            found.append(Sampler(node, node.input[0], node.input[1], "grid", mode,
                                 attribute(node, "padding_mode", "zeros"),
                                 bool(attribute(node, "align_corners", 0))))
        elif node.domain == names.ONNX_DOMAIN and node.op_type in kinds:
            found.append(Sampler(
                node, node.input[0], node.input[1], kinds[node.op_type],
                _ENUM_MODES.get(attribute(node, names.ATTR_INTERPOLATION_MODE, 0), "?"),
                _ENUM_PADDINGS.get(attribute(node, names.ATTR_PADDING_MODE, 0), "?"),
                bool(attribute(node, names.ATTR_ALIGN_CORNERS, 0)),
            ))
    return found


def is_learned(node: onnx.NodeProto, trainable: frozenset[str] = frozenset()) -> bool:
    """A layer of the network proper: a learned op type, or any node reading a trained weight."""
    return node.op_type in LEARNED_OPS or any(name in trainable for name in node.input)


@dataclass(frozen=True)
class GeometricPath:
    """The grid generator of one sampler: its nodes and where the transform parameters enter."""

    nodes: tuple[onnx.NodeProto, ...]  # graph order, the sampler excluded
    parameters: tuple[str, ...]  # learned-layer outputs (or graph inputs) the path starts from

    def node_names(self) -> set[str]:
        return {n.name for n in self.nodes}


def geometric_path(index: GraphIndex, sampler: Sampler,
                   trainable: Iterable[str] = ()) -> GeometricPath:
    """The nodes between the transform parameters and ``sampler``'s coordinate input."""
    trainable = frozenset(trainable)
    seen: set[str] = set()
    nodes: dict[str, onnx.NodeProto] = {}
    parameters: list[str] = []
    stack = [sampler.coords]
    while stack:
        name = stack.pop()
        if name in seen or index.is_const(name):
            continue
        seen.add(name)
        node = index.producer.get(name)
        if node is None:
            parameters.append(name)  # a graph input feeds the geometry directly
            continue
        if node.op_type in SHAPE_OPS:
            continue
        if is_learned(node, trainable):
            parameters.append(name)
            continue
        nodes[node_key(node)] = node
        stack.extend(i for i in node.input if i)
    ordered = sorted(nodes.values(), key=lambda n: index.position[node_key(n)])
    return GeometricPath(tuple(ordered), tuple(dict.fromkeys(parameters)))


@dataclass(frozen=True)
class Cut:
    """A tensor the coordinates depend on alone: the nodes from it to them, and shape feeds."""

    value: str
    nodes: tuple[onnx.NodeProto, ...]
    shape_sources: tuple[str, ...]  # values read only through Shape/Size


def _cut_from(index: GraphIndex, target: str, candidate: str) -> Cut | None:
    """The sub-graph computing ``target`` from ``candidate`` when nothing else variable feeds it."""
    nodes: dict[str, onnx.NodeProto] = {}
    shape_sources: list[str] = []
    seen: set[str] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        if name in seen or name == candidate or index.is_const(name):
            continue
        seen.add(name)
        node = index.producer.get(name)
        if node is None:
            return None  # reached a graph input around the candidate
        nodes[node_key(node)] = node
        if node.op_type in SHAPE_OPS:
            shape_sources.extend(i for i in node.input if i)
            continue
        stack.extend(i for i in node.input if i)
    ordered = sorted(nodes.values(), key=lambda n: index.position[node_key(n)])
    return Cut(candidate, tuple(ordered), tuple(dict.fromkeys(shape_sources)))


def _matrix_shape(index: GraphIndex, name: str, batch) -> tuple[int, int] | None:
    """(rows, 3) when ``name`` is a per-sample [N,2,3] or [N,3,3] float tensor, else None."""
    dims = index.shape(name)
    if dims is None or len(dims) != 3 or dims[1:] not in ((2, 3), (3, 3)):
        return None
    if dims[0] != batch or index.elem_type(name) not in _FLOATS:
        return None  # a transform shared by the batch, or not a float: no per-sample theta
    return dims[1], dims[2]


def coordinate_cut(index: GraphIndex, sampler: Sampler, max_depth: int = 64) -> list[Cut]:
    """Candidate transforms of ``sampler``'s grid, nearest first: [N,2,3] or [N,3,3] cuts."""
    if sampler.kind != "grid":
        return []
    image_dims = index.shape(sampler.image)
    batch = image_dims[0] if image_dims else None
    found: list[Cut] = []
    queue = collections.deque([(sampler.coords, 0)])
    seen = {sampler.coords}
    while queue:
        name, depth = queue.popleft()
        if depth > max_depth:
            break
        if name != sampler.coords and _matrix_shape(index, name, batch) is not None:
            cut = _cut_from(index, sampler.coords, name)
            if cut is not None:
                found.append(cut)
        node = index.producer.get(name)
        if node is None or node.op_type in SHAPE_OPS or is_learned(node):
            continue
        for i in node.input:
            if i and i not in seen and not index.is_const(i):
                seen.add(i)
                queue.append((i, depth + 1))
    return found


def const_producers(index: GraphIndex, names_: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes computing the non-initializer constants among ``names_`` (recursively)."""
    out: dict[str, onnx.NodeProto] = {}
    stack = [n for n in names_ if n and n not in index.initializers and index.is_const(n)]
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or node_key(node) in out:
            continue
        out[node_key(node)] = node
        stack.extend(i for i in node.input if i and i not in index.initializers)
    return list(out.values())


def submodel(index: GraphIndex, nodes: Iterable[onnx.NodeProto], inputs: Iterable[str],
             outputs: Iterable[str]) -> onnx.ModelProto:
    """A runnable model of ``nodes`` (plus the constants they read) from ``inputs``."""
    nodes = list(nodes)
    inputs, outputs = list(inputs), list(outputs)
    read = {i for n in nodes for i in n.input if i}
    nodes += const_producers(index, read)
    read |= {i for n in nodes for i in n.input if i}
    nodes.sort(key=lambda n: index.position[node_key(n)])

    def info(name: str) -> onnx.ValueInfoProto:
        value = onnx.ValueInfoProto(name=name)
        if name in index.types:
            value.type.CopyFrom(index.types[name])
        return value

    graph = helper.make_graph(
        nodes, "probe", [info(n) for n in inputs], [info(n) for n in outputs],
        initializer=[index.initializers[n] for n in sorted(read) if n in index.initializers],
    )
    model = helper.make_model(graph, opset_imports=list(index.model.opset_import))
    model.ir_version = index.model.ir_version
    return model
