"""Plugin-flavour ONNX on ONNX Runtime: the graph split at its ``stn`` nodes, our kernels between.

ONNX Runtime has no kernel for our plugin ops (domain ``stn``). The cheap ways to add one are
closed or slow here:

- a native custom-op library needs ONNX Runtime's C API header, which no package on the
  registries our machines and CI reach ships (the onnxruntime wheels, the onnxruntime-node /
  -common / -react-native npm packages, Debian 12: checked, none has ``onnxruntime_c_api.h``);
- a Python custom op through onnxruntime-extensions (:mod:`stn_deploy.plugins.ort_ops`) costs
  ~30 us per call plus ~100 ns per output value, because the extension hands a Python op's
  output back as ``r.flatten().tolist()``: 46 ms for one 32x3x64x64 sampling that takes 1 ms.

So the graph runs as stages: ONNX Runtime sessions over the ordinary nodes, cut at the plugin
nodes, and between stages each plugin node runs the production CPU kernels
(:func:`stn_deploy.plugins.cpu.sample_into`) on the numpy arrays the stages return, on as many
threads as the session's intra-op setting. The per-call cost is one ``run`` per extra stage and
one ctypes call per plugin node (microseconds, no copies). A node's stage is the number of
plugin nodes on the longest path from the graph inputs to it, so a model with one transformer
runs in two stages, a two-stage STN in three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from stn_deploy.runtime.session import SessionError

__all__ = ["PLUGIN_DOMAIN", "has_plugin_nodes", "StagedGraph", "PluginCall"]

PLUGIN_DOMAIN = "stn"


def has_plugin_nodes(model) -> bool:
    """Does the main graph of ``model`` (an onnx.ModelProto) hold ``stn`` plugin nodes?"""
    return any(node.domain == PLUGIN_DOMAIN for node in model.graph.node)


def _subgraph_inputs(node) -> set[str]:
    """Outer-scope names a node's subgraphs (If/Loop/Scan bodies) read."""
    import onnx

    used: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {i.name for i in g.initializer}
            for inner in g.node:
                defined.update(inner.output)
            for inner in g.node:
                used.update(n for n in (*inner.input, *_subgraph_inputs(inner))
                            if n and n not in defined)
    return used


def _reads(node) -> list[str]:
    return [n for n in (*node.input, *sorted(_subgraph_inputs(node))) if n]


@dataclass
class PluginCall:
    """One plugin node: its op, tensors and attributes, checked and ready to call."""

    op_type: str
    x: str
    coords: str
    y: str
    source: int
    mode: int
    padding: int
    align_corners: int
    out_hw: tuple[int, int] | None  # None: from the grid's shape

    def run(self, env: dict[str, np.ndarray], threads: int) -> None:
        """Read X and the coordinates from ``env``, write Y there."""
        from stn_deploy.plugins import cpu

        x, coords = env[self.x], env[self.coords]
        n = x.shape[0] if x.ndim == 4 else -1
        want = {0: (n, None, None, 2), 1: (n, 2, 3), 2: (n, 3, 3)}[self.source]
        if (x.dtype != np.float32 or coords.dtype != np.float32 or x.ndim != 4
                or coords.ndim != len(want)
                or any(w is not None and w != g for w, g in zip(want, coords.shape))):
            raise SessionError(
                f"plugin node {self.op_type} ({self.y!r}) got X {list(x.shape)} {x.dtype} and "
                f"coordinates {list(coords.shape)} {coords.dtype}; ONNX Runtime's route takes "
                f"float32 X [N,C,H,W] and coordinates {[d or '?' for d in want]} "
                "(export fp16 models with stn-deploy, which feeds plugin nodes float32)"
            )
        oh, ow = self.out_hw or coords.shape[1:3]
        y = np.empty((x.shape[0], x.shape[1], oh, ow), dtype=np.float32)
        cpu.sample_into(self.source, np.ascontiguousarray(x), np.ascontiguousarray(coords), y,
                        self.mode, self.padding, self.align_corners, threads)
        env[self.y] = y


@dataclass
class _Stage:
    """Ordinary nodes run by one ONNX Runtime session, then the plugin nodes they feed."""

    nodes: list = field(default_factory=list)
    plugins: list[PluginCall] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    session: object = None


def _plugin(node) -> PluginCall:
    from onnx import helper

    from stn_deploy.plugins import names

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    sources = {names.GRID_SAMPLE_OP: 0, names.AFFINE_GRID_SAMPLE_OP: 1,
               names.PROJECTIVE_GRID_SAMPLE_OP: 2}
    if node.op_type not in sources or len(node.input) != 2 or len(node.output) != 1:
        raise SessionError(
            f"node {node.name!r} is {PLUGIN_DOMAIN}::{node.op_type} with {len(node.input)} "
            f"inputs; expected one of {sorted(sources)} with inputs (X, coordinates)"
        )
    missing = [f for f in names.FIELDS[node.op_type] if f not in attrs]
    if missing:
        raise SessionError(f"plugin node {node.name!r} ({node.op_type}) lacks attributes "
                           f"{missing}; re-export it with stn-deploy export --flavour plugin")
    try:
        mode = names.mode_int(int(attrs[names.ATTR_INTERPOLATION_MODE]))
        padding = names.padding_int(int(attrs[names.ATTR_PADDING_MODE]))
    except ValueError as exc:
        raise SessionError(f"plugin node {node.name!r}: {exc}") from exc
    source = sources[node.op_type]
    out_hw = None
    if source:
        out_hw = (int(attrs[names.ATTR_OUT_HEIGHT]), int(attrs[names.ATTR_OUT_WIDTH]))
    return PluginCall(node.op_type, node.input[0], node.input[1], node.output[0], source, mode,
                   padding, int(bool(attrs[names.ATTR_ALIGN_CORNERS])), out_hw)


class StagedGraph:
    """A plugin-flavour model run as ONNX Runtime stages with the CPU kernels between them.

    ``make_session(model_bytes)`` opens one ONNX Runtime session (the caller's options);
    ``threads`` is the kernels' thread count (the session's intra-op threads).
    """

    def __init__(self, model, make_session: Callable[[bytes], object], threads: int) -> None:
        self.threads = max(1, int(threads))
        self.model = model
        self.output_names = [o.name for o in model.graph.output]
        self.stages = self._split(model)
        for stage in self.stages:
            if stage.nodes:
                stage.session = make_session(self._stage_model(stage).SerializeToString())

    # -- building ---------------------------------------------------------------------------
    def _split(self, model) -> list[_Stage]:
        graph = model.graph
        constants = {i.name for i in graph.initializer}
        depth: dict[str, int] = {i.name: 0 for i in graph.input}
        depth.update({name: 0 for name in constants})
        stages: list[_Stage] = []

        def stage(d: int) -> _Stage:
            while len(stages) <= d:
                stages.append(_Stage())
            return stages[d]

        for node in graph.node:
            d = max((depth.get(n, 0) for n in _reads(node)), default=0)
            if node.domain == PLUGIN_DOMAIN:
                stage(d).plugins.append(_plugin(node))
                depth[node.output[0]] = d + 1
                stage(d + 1)
            else:
                stage(d).nodes.append(node)
                depth.update({o: d for o in node.output if o})
        needed_after: list[set[str]] = [set() for _ in stages]
        wanted = set(self.output_names)
        for d in range(len(stages) - 1, -1, -1):
            needed_after[d] = set(wanted)
            s = stages[d]
            wanted |= {p.x for p in s.plugins} | {p.coords for p in s.plugins}
            wanted |= {n for node in s.nodes for n in _reads(node)}
        for d, s in enumerate(stages):
            produced = {o for node in s.nodes for o in node.output if o}
            reads = {n for node in s.nodes for n in _reads(node)}
            s.inputs = sorted(n for n in reads - produced if n not in constants)
            plugin_reads = {p.x for p in s.plugins} | {p.coords for p in s.plugins}
            s.outputs = sorted(produced & (needed_after[d] | plugin_reads))
        return stages

    def _types(self) -> dict:
        """name -> TypeProto for every tensor with a known type (plugin outputs: X's type)."""
        import onnx

        inferred = onnx.shape_inference.infer_shapes(self.model)
        g = inferred.graph
        types = {v.name: v.type for v in (*g.input, *g.value_info, *g.output)
                 if v.type.HasField("tensor_type")}
        for init in g.initializer:
            types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, init.dims)
        for s in self.stages:
            for p in s.plugins:
                elem = types[p.x].tensor_type.elem_type if p.x in types else 1
                types[p.y] = onnx.helper.make_tensor_type_proto(elem, [None] * 4)
        return types

    def _stage_model(self, stage: _Stage):
        from onnx import helper

        if not hasattr(self, "_type_map"):
            self._type_map = self._types()
        types = self._type_map
        graph = self.model.graph

        def info(name: str):
            if name not in types:
                raise SessionError(
                    f"cannot split the plugin-flavour graph: the type of {name!r} is unknown "
                    "(run onnx shape inference on the model, or re-export it with stn-deploy)"
                )
            return helper.make_value_info(name, types[name])

        used = {n for node in stage.nodes for n in _reads(node)}
        sub = helper.make_graph(
            list(stage.nodes), f"{graph.name or 'graph'}_stage",
            [info(n) for n in stage.inputs], [info(n) for n in stage.outputs],
            initializer=[i for i in graph.initializer if i.name in used],
        )
        opsets = [o for o in self.model.opset_import if o.domain != PLUGIN_DOMAIN]
        out = helper.make_model(sub, opset_imports=opsets, ir_version=self.model.ir_version)
        out.functions.extend(self.model.functions)
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None,
            trace: list | None = None) -> list[np.ndarray]:
        """The graph's outputs (or ``output_names``) for ``feeds``, in order.

        ``trace``, when given, receives ``(plugin, X, coordinates)`` of every plugin call
        (the benchmark times the kernels on exactly these arrays).
        """
        env: dict[str, np.ndarray] = dict(feeds)
        for stage in self.stages:
            if stage.session is not None:
                values = stage.session.run(stage.outputs, {n: env[n] for n in stage.inputs})
                env.update(zip(stage.outputs, values))
            for plugin in stage.plugins:
                if trace is not None:
                    trace.append((plugin, env[plugin.x], env[plugin.coords]))
                plugin.run(env, self.threads)
        names = self.output_names if output_names is None else list(output_names)
        constants = {i.name: i for i in self.model.graph.initializer}
        missing = [n for n in names if n not in env and n not in constants]
        if missing:
            raise SessionError(f"outputs {missing} were not produced by the staged graph")
        return [env[n] if n in env else _constant(constants[n]) for n in names]


def _constant(initializer) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(initializer)
