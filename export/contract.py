"""The TensorRT contract check: every ONNX construct TensorRT would reject or silently mis-run.

Each rule is a function ``(model) -> findings`` in :data:`RULES`; a finding names the node, the
problem and the fix. ``check_model`` runs them all and returns a :class:`ContractReport` whose
``bool()`` is False when any finding is an error. The facts behind the rules are in
DESIGN.md ("ONNX facts that decide the export").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnx

from stn_deploy.plugins import names

__all__ = [
    "Finding",
    "ContractReport",
    "RULES",
    "check_model",
    "MAX_IR_VERSION",
    "MAX_GRIDSAMPLE_OPSET",
    "PLUGIN_DOMAIN",
    "PLUGIN_OPS",
]

MAX_IR_VERSION = 10  # TensorRT's parsers (and ORT 1.31, which reads <= 13) load IR 10 safely
MAX_GRIDSAMPLE_OPSET = 19  # GridSample-20 renames the modes TensorRT maps (NVIDIA/TensorRT#4646)
TRT_MODES = ("bilinear", "nearest", "bicubic")  # what TensorRT's GridSample importer knows
PADDINGS = ("zeros", "border", "reflection")
PLUGIN_DOMAIN = names.ONNX_DOMAIN
PLUGIN_NAMESPACE = names.PLUGIN_NAMESPACE
PLUGIN_VERSION = names.PLUGIN_VERSION
PLUGIN_OPS = names.OP_TYPES
KNOWN_DOMAINS = ("", "ai.onnx", PLUGIN_DOMAIN)
REEXPORT = "re-export with: stn-deploy export CKPT_DIR --out model.onnx"


@dataclass(frozen=True)
class Finding:
    """One contract problem: which rule, where, what is wrong, and how to fix it."""

    rule: str
    node: str
    problem: str
    fix: str
    severity: str = "error"  # "error": TensorRT rejects or mis-runs it; "warning": worth a look

    def __str__(self) -> str:
        return f"[{self.severity}] {self.rule} at {self.node}: {self.problem}. Fix: {self.fix}"


@dataclass(frozen=True)
class ContractReport:
    """All findings for one model; ``bool(report)`` is True when there is no error."""

    source: str
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def __bool__(self) -> bool:
        return not self.errors

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def summary(self) -> str:
        verdict = "OK" if self else "FAILED"
        return (
            f"contract {verdict}: {self.source}: {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )

    def format(self) -> str:
        return "\n".join([*(str(f) for f in self.findings), self.summary()])


Rule = Callable[[onnx.ModelProto], Iterator[Finding]]
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return register


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or f"<unnamed {node.op_type}>"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _nodes(model: onnx.ModelProto, op_type: str | None = None) -> Iterator[onnx.NodeProto]:
    for node in model.graph.node:
        if op_type is None or node.op_type == op_type:
            yield node


def _shape_index(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    return {v.name: v.type for v in values}


@rule("gridsample-mode")
def _gridsample_mode(model: onnx.ModelProto) -> Iterator[Finding]:
    for node in _nodes(model, "GridSample"):
        mode = _attr(node, "mode", "bilinear")
        if mode not in TRT_MODES:
            yield Finding(
                "gridsample-mode",
                _node_name(node),
                f"GridSample mode {mode!r} is an opset-20 name; TensorRT's importer only maps "
                f"{'/'.join(TRT_MODES)} and silently samples NEAREST for anything else "
                "(NVIDIA/TensorRT#4646)",
                f"export at opset 18 (mode 'bilinear'/'bicubic'); {REEXPORT}",
            )
        padding = _attr(node, "padding_mode", "zeros")
        if padding not in PADDINGS:
            yield Finding(
                "gridsample-mode",
                _node_name(node),
                f"GridSample padding_mode {padding!r} is not one of {PADDINGS}",
                REEXPORT,
            )


@rule("affine-grid")
def _affine_grid(model: onnx.ModelProto) -> Iterator[Finding]:
    for node in _nodes(model, "AffineGrid"):
        yield Finding(
            "affine-grid",
            _node_name(node),
            "AffineGrid (opset 20) has no TensorRT importer; the parser rejects the model",
            f"export the grid as a MatMul against a constant base grid; {REEXPORT}",
        )


@rule("gridsample-rank")
def _gridsample_rank(model: onnx.ModelProto) -> Iterator[Finding]:
    types = _shape_index(model)
    for node in _nodes(model, "GridSample"):
        for role, name, want in (("X", node.input[0], 4), ("grid", node.input[1], 4)):
            t = types.get(name)
            if t is None or not t.tensor_type.HasField("shape"):
                continue
            rank = len(t.tensor_type.shape.dim)
            if rank != want:
                yield Finding(
                    "gridsample-rank",
                    _node_name(node),
                    f"GridSample input {role} {name!r} has rank {rank}; TensorRT's "
                    "IGridSampleLayer only takes 4-D input [N,C,H,W] and grid [N,Ho,Wo,2]",
                    "sample 2-D images only; reshape volumetric data into a batch of 2-D slices",
                )


@rule("gridsample-opset")
def _gridsample_opset(model: onnx.ModelProto) -> Iterator[Finding]:
    opset = _default_opset(model)
    if opset > MAX_GRIDSAMPLE_OPSET and any(True for _ in _nodes(model, "GridSample")):
        yield Finding(
            "gridsample-opset",
            "<model>",
            f"the model imports ONNX opset {opset}; GridSample-{min(opset, 22)} uses the mode "
            f"names linear/cubic that TensorRT mis-reads, keep opset <= {MAX_GRIDSAMPLE_OPSET}",
            f"export with opset 18; {REEXPORT}",
        )


@rule("ir-version")
def _ir_version(model: onnx.ModelProto) -> Iterator[Finding]:
    if model.ir_version > MAX_IR_VERSION:
        yield Finding(
            "ir-version",
            "<model>",
            f"IR version {model.ir_version} is newer than {MAX_IR_VERSION}: ONNX Runtime 1.31 "
            "refuses IR > 13 and TensorRT's parser is only safe up to 10",
            f"set model.ir_version = {MAX_IR_VERSION} (stn-deploy export does this); {REEXPORT}",
        )


@rule("dynamic-batch")
def _dynamic_batch(model: onnx.ModelProto) -> Iterator[Finding]:
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            fixed = dims[0].dim_value if dims else "none (scalar)"
            yield Finding(
                "dynamic-batch",
                value.name,
                f"input {value.name!r} has a fixed batch dimension ({fixed}); a TensorRT "
                "optimisation profile and the batching server need it dynamic",
                f"export with a dynamic batch dimension; {REEXPORT}",
            )


@rule("plugin-attributes")
def _plugin_attributes(model: onnx.ModelProto) -> Iterator[Finding]:
    for node in _nodes(model):
        if node.domain != PLUGIN_DOMAIN and node.op_type not in PLUGIN_OPS:
            continue
        name = _node_name(node)
        if node.op_type not in PLUGIN_OPS:
            yield Finding(
                "plugin-attributes",
                name,
                f"op {node.domain}::{node.op_type} is not one of our plugins {PLUGIN_OPS}",
                "export with stn-deploy export --flavour plugin",
            )
            continue
        missing = [f for f in names.FIELDS[node.op_type] if _attr(node, f) is None]
        if missing:
            yield Finding(
                "plugin-attributes",
                name,
                f"plugin node {node.op_type} lacks the creator field(s) {missing}; the plugin "
                "would build with defaults that may not match the model",
                "export with stn-deploy export --flavour plugin",
            )
        for attr, want in (("plugin_namespace", PLUGIN_NAMESPACE),
                           ("plugin_version", PLUGIN_VERSION)):
            got = _attr(node, attr)
            if got != want:
                yield Finding(
                    "plugin-attributes",
                    name,
                    f"plugin node {node.op_type} has {attr}={got!r}, expected {want!r}; "
                    "TensorRT's parser looks plugins up by (op_type, version, namespace)",
                    f"set {attr}={want!r} on the node; stn-deploy export --flavour plugin does",
                )
        if node.domain != PLUGIN_DOMAIN:
            yield Finding(
                "plugin-attributes",
                name,
                f"plugin node {node.op_type} is in domain {node.domain!r}, not {PLUGIN_DOMAIN!r}",
                "export with stn-deploy export --flavour plugin",
            )


def _type_name(elem: int) -> str:
    return onnx.helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower() \
        if elem else "unknown"


@rule("plugin-types")
def _plugin_types(model: onnx.ModelProto) -> Iterator[Finding]:
    from stn_deploy.export import geometry

    index = geometry.GraphIndex(model)
    onnx_names = {onnx.TensorProto.FLOAT: "float", onnx.TensorProto.FLOAT16: "float16"}
    for sampler in geometry.samplers(model):
        if sampler.node.domain != PLUGIN_DOMAIN:
            continue
        elems = [index.elem_type(n) for n in (sampler.image, sampler.coords,
                                              sampler.node.output[0])]
        if not all(elems[:2]):
            continue  # types unknown (shape inference failed): that finding is reported
        types = tuple(onnx_names.get(e, _type_name(e)) for e in elems)
        where = [("TensorRT's plugin", names.TENSORRT_TYPES),
                 ("the ONNX Runtime custom op (CPU checker)", names.ONNXRUNTIME_TYPES)]
        for who, table in where:
            if types not in table:
                yield Finding(
                    "plugin-types",
                    _node_name(sampler.node),
                    f"{sampler.node.op_type} gets (X, coordinates, Y) = {types}; {who} accepts "
                    f"{' or '.join(map(str, table))}",
                    "feed the plugin float32 through Casts; stn-deploy export --flavour plugin "
                    "--precision fp16 writes it that way",
                )


def _per_sample(index, name: str) -> int | None:
    dims = index.shape(name)
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return int(math.prod(dims[1:]))


@rule("fp16-geometry")
def _fp16_geometry(model: onnx.ModelProto) -> Iterator[Finding]:
    """Grid-sized fp16 tensors between the localisation net and a sampler.

    The transform parameters themselves may come out of fp16 layers (that is the policy); what
    must not be fp16 is the grid arithmetic after them, recognised by its size: a tensor with
    at least one value per output pixel (a grid, a flow, a field of points).
    """
    from stn_deploy.export import geometry

    index = geometry.GraphIndex(model)
    half = onnx.TensorProto.FLOAT16
    for sampler in geometry.samplers(model):
        out = index.shape(sampler.node.output[0])
        pixels = int(math.prod(out[2:])) if out and all(isinstance(d, int) for d in out[2:]) \
            else None
        path = geometry.geometric_path(index, sampler)
        fp16_nodes = [
            n for n in path.nodes for o in n.output[:1]
            if index.elem_type(o) == half and pixels
            and (_per_sample(index, o) or 0) >= pixels
        ]
        if index.elem_type(sampler.coords) == half and not fp16_nodes:
            fp16_nodes = [index.producer.get(sampler.coords) or sampler.node]
        if not fp16_nodes:
            continue
        first = fp16_nodes[0]
        yield Finding(
            "fp16-geometry",
            _node_name(first),
            f"the coordinates of {sampler.node.op_type} {_node_name(sampler.node)!r} are "
            f"computed in fp16 from here ({first.op_type}, {len(fp16_nodes)} fp16 grid-sized "
            "tensor(s) on the grid path): fp16 keeps 11 bits, so grid points move by up to "
            "1/2000 of the image and nearest sampling picks neighbouring pixels",
            "keep the grid generator and the sampler in fp32; stn-deploy export --precision fp16 "
            "does",
        )


@rule("unknown-domain")
def _unknown_domain(model: onnx.ModelProto) -> Iterator[Finding]:
    local = {(f.domain, f.name) for f in model.functions}
    seen: set[str] = set()
    for node in _nodes(model):
        if node.domain in KNOWN_DOMAINS or (node.domain, node.op_type) in local:
            continue
        if node.domain in seen:
            continue
        seen.add(node.domain)
        yield Finding(
            "unknown-domain",
            _node_name(node),
            f"op {node.domain}::{node.op_type} is from a domain neither TensorRT nor plain "
            "ONNX Runtime knows",
            "export the module with standard ONNX ops, or provide a TensorRT plugin and an ONNX "
            "Runtime custom-op library for it",
        )


@rule("input-dtype")
def _input_dtype(model: onnx.ModelProto) -> Iterator[Finding]:
    ok = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        elem = value.type.tensor_type.elem_type
        if value.name not in initializers and elem not in ok:
            yield Finding(
                "input-dtype",
                value.name,
                f"input {value.name!r} is {onnx.TensorProto.DataType.Name(elem)}; the image "
                "input of an STN is expected as float32 or float16",
                "cast inside the model, or feed float tensors",
                severity="warning",
            )


def _load(model_or_path: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, model_or_path.graph.name or "<model>"
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        from stn_deploy.export.errors import ContractError

        raise ContractError(
            f"no ONNX file at {path!r}; export one with: stn-deploy export CKPT_DIR --out {path}"
        )
    return onnx.load(path, load_external_data=False), path


def check_model(model_or_path: onnx.ModelProto | str | os.PathLike) -> ContractReport:
    """Run every rule in :data:`RULES` on an ONNX model or file; never raises for findings."""
    from stn_deploy.export.plugin_flavour import register_schemas

    register_schemas()  # so shape inference types our plugin nodes' outputs
    model, source = _load(model_or_path)
    findings: list[Finding] = []
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        findings.append(
            Finding(
                "shape-inference",
                "<model>",
                f"ONNX shape inference failed ({str(exc).splitlines()[0]}); the rank rule "
                "could only use declared shapes",
                "run onnx.checker.check_model(path, full_check=True) to locate the bad node",
                severity="warning",
            )
        )
    for fn in RULES.values():
        findings.extend(fn(model))
    return ContractReport(source=str(source), findings=tuple(findings))
