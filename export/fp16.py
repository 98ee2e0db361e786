"""fp16 export as a graph pass: an fp32 graph becomes fp16 except for its geometric paths.

The module is exported in fp32 (so a ``.float()`` or a float32 constant inside its forward is
no obstacle), then this pass converts the graph: fp16 inputs and outputs, fp16 weights and
activations, except every sampler and its grid generator, found in the graph by
:func:`stn_deploy.export.geometry.geometric_path` (from the transform parameters the localisation
net outputs, through grid generation, to the sampling), for any module. Those stay fp32 between
Casts, with their constants in fp32. Sampling coordinates need more than fp16's 11 bits: a grid
rounded to fp16 moves nearest-mode samples to neighbouring pixels and bilinear ones by up to
1/60 of a pixel on a 64-pixel image.

Why not onnxruntime.transformers.float16 or onnxconverter-common with a node block list: both
were tried on these graphs. They convert the constants of blocked nodes to fp16 (the TPS matrices
lost their precision: errors of 0.9 on a rectified image), insert no Cast after a custom op
whose output type they cannot infer (our plugin nodes), and fail on a graph output produced by a
blocked node. Their op lists (ops without fp16 kernels, inputs that must stay float32) are reused.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stn_deploy.export import geometry
from stn_deploy.export.errors import ExportError
from stn_deploy.export.geometry import node_key

__all__ = ["Fp16Report", "to_fp16", "geometric_nodes"]

log = logging.getLogger(__name__)

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# Nodes whose attributes fix a float32 output type.
_DTYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype",
                "RandomUniform": "dtype", "RandomNormalLike": "dtype",
                "RandomUniformLike": "dtype", "Bernoulli": "dtype"}


def _op_lists() -> tuple[frozenset[str], dict[str, tuple[int, ...]]]:
    """(op types without fp16 support, {op type: inputs that must stay float32})."""
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS, DEFAULT_OP_BLOCK_LIST

    always = {op: tuple(idx) for op, idx in ALWAYS_FLOAT_INPUTS.items()}
    always.setdefault("Upsample", (1,))
    return frozenset(DEFAULT_OP_BLOCK_LIST), always


@dataclass(frozen=True)
class Fp16Report:
    """How many nodes stayed fp32, and where the transform parameters enter each island."""

    kept_fp32: int
    converted: int
    parameters: tuple[str, ...]
    clipped: int = 0  # weights beyond fp16's range, clipped to +-65504

    def summary(self) -> str:
        text = (f"fp16: {self.converted} node(s) in fp16, {self.kept_fp32} kept fp32 for grid "
                f"generation and sampling (from {', '.join(self.parameters) or 'constants'})")
        return text + (f"; {self.clipped} weight(s) clipped to the fp16 range"
                       if self.clipped else "")


def geometric_nodes(model: onnx.ModelProto, trainable: Iterable[str] = ()
                    ) -> tuple[list[onnx.NodeProto], tuple[str, ...]]:
    """(every sampler and grid-generator node with the constants they compute, the parameters)."""
    index = geometry.GraphIndex(model)
    keep: dict[str, onnx.NodeProto] = {}
    parameters: list[str] = []
    for sampler in geometry.samplers(model):
        path = geometry.geometric_path(index, sampler, trainable)
        for node in (*path.nodes, sampler.node):
            keep[node_key(node)] = node
        parameters.extend(path.parameters)
    read = {i for n in keep.values() for i in n.input if i}
    for node in geometry.const_producers(index, read):
        keep[node_key(node)] = node
    return list(keep.values()), tuple(dict.fromkeys(parameters))


def _to_fp16_tensor(tensor: TensorProto) -> tuple[TensorProto, int]:
    values = numpy_helper.to_array(tensor)
    clipped = int((np.abs(values) > FP16_MAX).sum())
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(half, tensor.name), clipped


class _Converter:
    """One conversion: decides each edge's precision and inserts the Casts between them."""

    def __init__(self, model: onnx.ModelProto, fp32_nodes: Iterable[onnx.NodeProto]) -> None:
        self.model = model
        self.graph = model.graph
        block_ops, self.always_float = _op_lists()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          18)
        self.fp32 = {node_key(n) for n in fp32_nodes}
        self.fp32 |= {node_key(n) for n in self.graph.node
                      if n.op_type in block_ops or not self._takes_fp16(n)}
        self.index = geometry.GraphIndex(model)
        self.casts: dict[tuple[str, int], str] = {}
        self.clipped = 0

    def _takes_fp16(self, node: onnx.NodeProto) -> bool:
        """False when the op's schema at this opset has a float input without float16 (IsInf
        before opset 20, say): such a node stays fp32 between Casts."""
        if node.domain not in ("", "ai.onnx"):
            return True
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return True
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        for formal in schema.inputs:
            types = allowed.get(formal.type_str, {formal.type_str})
            if "tensor(float)" in types and "tensor(float16)" not in types:
                return False
        return True

    def _is_float(self, name: str) -> bool:
        return self.index.elem_type(name) == FLOAT

    def _wants_fp32(self, node: onnx.NodeProto, slot: int) -> bool:
        return node_key(node) in self.fp32 or slot in self.always_float.get(node.op_type, ())

    def _fp32_side(self, name: str) -> bool:
        """Whether ``name`` (not an initializer) holds fp32 after conversion."""
        producer = self.index.producer.get(name)
        return producer is not None and node_key(producer) in self.fp32

    def _cast(self, name: str, to: int, pending: list[onnx.NodeProto]) -> str:
        key = (name, to)
        if key not in self.casts:
            suffix = "fp32" if to == FLOAT else "fp16"
            out = f"{name}__{suffix}"
            pending.append(helper.make_node("Cast", [name], [out], to=to,
                                            name=f"stn_cast_{suffix}_{len(self.casts)}"))
            self.casts[key] = out
        return self.casts[key]

    def _initializers(self) -> dict[str, str]:
        """Convert float initializers; {name: fp16 copy} for those both sides read."""
        wants: dict[str, set[bool]] = {}
        for node in self.graph.node:
            for slot, name in enumerate(node.input):
                if name in self.index.initializers and self._is_float(name):
                    wants.setdefault(name, set()).add(self._wants_fp32(node, slot))
        copies: dict[str, str] = {}
        for init in list(self.graph.initializer):
            sides = wants.get(init.name)
            if init.data_type != FLOAT or not sides or sides == {True}:
                continue
            half, clipped = _to_fp16_tensor(init)
            self.clipped += clipped
            if sides == {False}:
                init.CopyFrom(half)
            else:
                half.name = copies[init.name] = f"{init.name}__fp16"
                self.graph.initializer.append(half)
        return copies

    def _convert_attributes(self, node: onnx.NodeProto) -> None:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                half, clipped = _to_fp16_tensor(attr.t)
                self.clipped += clipped
                attr.t.CopyFrom(half)
            elif attr.name == _DTYPE_ATTRS.get(node.op_type) and attr.i == FLOAT:
                attr.i = FLOAT16
        if node.op_type == "Constant":
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    values = np.array(helper.get_attribute_value(attr), dtype=np.float16)
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute(
                        "value", numpy_helper.from_array(values)))

    def _outputs_from_fp32_nodes(self) -> list[onnx.NodeProto]:
        """Graph outputs that fp32 nodes produce: renamed inside, cast to fp16 at the end."""
        tail = []
        for out in self.graph.output:
            if not (self._is_float(out.name) and self._fp32_side(out.name)):
                continue
            inner = f"{out.name}__fp32"
            typed = copy.deepcopy(out)
            typed.name = inner
            self.graph.value_info.append(typed)
            for node in self.graph.node:
                node.input[:] = [inner if i == out.name else i for i in node.input]
                if out.name == node.output[0] and out.name in self.fp32:
                    self.fp32.add(inner)  # the node's key is its first output
                node.output[:] = [inner if o == out.name else o for o in node.output]
            tail.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT16,
                                         name=f"stn_output_cast_{out.name}"))
        return tail

    def run(self) -> int:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in self.graph.node for a in n.attribute):
            raise ExportError("the graph has control flow (If/Loop/Scan), which the fp16 pass "
                              "does not convert; export with --precision fp32")
        copies = self._initializers()
        tail = self._outputs_from_fp32_nodes()
        self.index = geometry.GraphIndex(self.model)  # names changed
        nodes: list[onnx.NodeProto] = []
        for node in self.graph.node:
            pending: list[onnx.NodeProto] = []
            for slot, name in enumerate(node.input):
                if not name or not self._is_float(name):
                    continue
                fp32 = self._wants_fp32(node, slot)
                if name in self.index.initializers:
                    if not fp32 and name in copies:
                        node.input[slot] = copies[name]
                    continue
                if self._fp32_side(name) != fp32:
                    node.input[slot] = self._cast(name, FLOAT if fp32 else FLOAT16, pending)
            if node_key(node) not in self.fp32:
                self._convert_attributes(node)
            nodes.extend([*pending, node])
        del self.graph.node[:]
        self.graph.node.extend([*nodes, *tail])
        for value in (*self.graph.input, *self.graph.output):
            if value.type.tensor_type.elem_type == FLOAT:
                value.type.tensor_type.elem_type = FLOAT16
        return self.clipped


def to_fp16(model: onnx.ModelProto, trainable: Iterable[str] = ()) -> tuple[onnx.ModelProto,
                                                                              Fp16Report]:
    """An fp16 copy of an fp32 graph (fp16 inputs and outputs) with fp32 geometric paths.

    ``trainable`` names the initializers that are trained weights; a node reading one ends a
    geometric path (the localisation net's last layer), beside the layer types geometry knows.
    """
    from stn_deploy.export.plugin_flavour import register_schemas

    register_schemas()
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    kept, parameters = geometric_nodes(model, trainable)
    total = len(model.graph.node)
    try:
        clipped = _Converter(model, kept).run()
        del model.graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, ValueError, KeyError) as exc:
        raise ExportError(
            f"converting the exported fp32 graph to fp16 failed ({type(exc).__name__}: {exc}). "
            f"Tried: fp32 export, then an fp16 pass keeping {len(kept)} grid/sampling node(s) "
            "in fp32. Export with --precision fp32 instead (TensorRT 10's FP16 builder flag "
            "still runs it in fp16)"
        ) from exc
    report = Fp16Report(kept_fp32=len(kept), converted=total - len(kept), parameters=parameters,
                        clipped=clipped)
    log.debug(report.summary())
    return model, report
