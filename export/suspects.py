"""Name the node that makes an exported model disagree with PyTorch (for failed verifications).

Three questions, in order:

1. Does the graph sample differently from PyTorch? Each sampler's mode, padding and
   align_corners are compared with the ``F.grid_sample`` calls PyTorch made, in order, and each
   sampler's image with PyTorch's (float64) output of that call.
2. Is a node wrong on its own? Every intermediate is computed exactly by the float64 twin of the
   graph (:mod:`stn_deploy.export.graph64`); each node then runs alone on the backend, fed those
   exact inputs in the node's own types. A node whose own output misses the exact one by more
   than rounding at its precision is named.
3. Otherwise no node is wrong: the difference is rounding that some node amplifies. The node
   with the largest amplification is named with the upstream node its input error comes from,
   and the answer says that it only amplifies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx.helper import tensor_dtype_to_np_dtype
from torch import nn
from torch.overrides import TorchFunctionMode

from stn_deploy.export import geometry
from stn_deploy.export.errors import ExportError
from stn_deploy.export.tolerances import Tolerance
from stn_deploy.plugins import names

__all__ = ["locate", "NodeError", "node_errors"]

# A node is wrong on its own when, fed exact inputs, its output misses the exact output by more
# than this fraction of the output's magnitude: ~100 ulp in fp32 (long matrix products stay
# near 1e-6), ~8 ulp in fp16 (one rounding of the output).
OWN_RTOL = {onnx.TensorProto.FLOAT: 1e-5, onnx.TensorProto.FLOAT16: 4e-3}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
# The float64 twin and PyTorch in float64 differ only by constants the export stored in float32.
SEMANTIC_RTOL = 1e-5


@dataclass(frozen=True)
class NodeError:
    """One node's errors against the float64 twin, relative to its output's magnitude."""

    node: str
    op_type: str
    output: str
    own: float  # fed exact inputs
    total: float  # fed what the backend computed upstream
    inputs: float  # the largest relative error among its float inputs
    worst_input: str

    @property
    def amplification(self) -> float:
        return self.total / max(self.inputs, 1e-12)


# ---- 1. sampling semantics against PyTorch --------------------------------------------------


class _SampleRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.grid_sample:
            knobs = dict(mode=kwargs.get("mode", args[2] if len(args) > 2 else "bilinear"),
                         padding_mode=kwargs.get("padding_mode",
                                                 args[3] if len(args) > 3 else "zeros"),
                         align_corners=bool(kwargs.get("align_corners",
                                                       args[4] if len(args) > 4 else False)))
            self.calls.append((knobs, out))
        return out


def _pytorch_exact(model: nn.Module, x: np.ndarray
                   ) -> tuple[list[tuple[dict, np.ndarray]], np.ndarray | None]:
    """PyTorch in float64: every F.grid_sample call (settings, image) and the logits."""
    import copy

    from stn_deploy.export.onnx_export import _ExportWrapper
    from stn_deploy.export.reference import PromoteFloat32

    recorder = _SampleRecorder()
    twin = _ExportWrapper(copy.deepcopy(model).double().eval(), ()).eval()
    try:
        with torch.inference_mode(), PromoteFloat32(), recorder:
            logits = twin(torch.from_numpy(x).double())
    except (RuntimeError, TypeError):
        return [], None
    calls = [(k, v.detach().to(torch.float64).numpy()) for k, v in recorder.calls]
    return calls, logits.detach().to(torch.float64).numpy()


def _semantics(model: nn.Module, proto: onnx.ModelProto, exact: dict[str, np.ndarray],
               x: np.ndarray) -> str | None:
    """Where the graph, computed exactly, stops computing what the module computes."""
    samplers = geometry.samplers(proto)
    calls, logits = _pytorch_exact(model, x)
    paired = len(calls) == len(samplers)
    for i, (sampler, (knobs, _)) in enumerate(zip(samplers, calls) if paired else (), start=1):
        graph = dict(mode=sampler.mode, padding_mode=sampler.padding_mode,
                     align_corners=sampler.align_corners)
        differ = {k: (graph[k], knobs[k]) for k in graph if graph[k] != knobs[k]}
        if differ:
            text = ", ".join(f"{k}={g!r} where PyTorch's call uses {t!r}"
                             for k, (g, t) in differ.items())
            return (f"{sampler.node.op_type} node {sampler.name!r} samples with {text} "
                    f"(F.grid_sample call #{i}); re-export the model")
    out = proto.graph.output[0].name
    if logits is None or out not in exact or _relative(exact[out], logits) <= SEMANTIC_RTOL:
        return None  # the graph means what the module computes: any difference is rounding
    for i, (sampler, (_, image)) in enumerate(zip(samplers, calls) if paired else (), start=1):
        got = exact.get(sampler.node.output[0])
        if got is not None and _relative(got, image) > SEMANTIC_RTOL:
            return (f"{sampler.node.op_type} node {sampler.name!r}: computed exactly (float64), "
                    f"its image differs from PyTorch's F.grid_sample call #{i} by "
                    f"{_relative(got, image):.3g} of its magnitude with the same settings: the "
                    "graph warps differently from the module before this node (other weights "
                    "for the localisation net, or a translation/fusion error)")
    where = (f"after the last sampler ({samplers[-1].name!r}), whose exact image matches "
             "PyTorch's" if paired and samplers else "in a graph whose samplers cannot be paired "
             "with PyTorch's calls")
    return (f"computed exactly (float64), the graph's {out!r} differs from PyTorch's by "
            f"{_relative(exact[out], logits):.3g} of its magnitude; the difference arises "
            f"{where}: the layers there differ from the module (other weights, or an export "
            "error)")


# ---- 2./3. node isolation against the float64 twin ------------------------------------------


def _relative(a: np.ndarray, exact: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    if a.shape != exact.shape:
        return math.inf
    scale = float(np.abs(exact).max()) if exact.size else 0.0
    finite = np.isfinite(exact)
    if not finite.all() or not np.isfinite(a[finite]).all():
        return 0.0 if np.array_equal(np.isnan(a), np.isnan(exact)) else math.inf
    return float(np.abs(a - exact).max()) / (scale or 1.0) if exact.size else 0.0


def _mark_all(proto: onnx.ModelProto) -> onnx.ModelProto:
    marked = onnx.ModelProto()
    marked.CopyFrom(proto)
    present = {o.name for o in marked.graph.output}
    index = geometry.GraphIndex(marked)
    for node in marked.graph.node:
        for out in node.output:
            if out and out not in present and index.elem_type(out):
                marked.graph.output.append(onnx.ValueInfoProto(name=out, type=index.types[out]))
    return marked


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if any(o.domain == names.ONNX_DOMAIN for o in proto.opset_import):
        from stn_deploy.plugins import ort_ops

        ort_ops.register(options)
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _alone(index: geometry.GraphIndex, node: onnx.NodeProto,
           exact: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(``node`` run alone on ONNX Runtime, the same node computed in float64), both fed the
    exact values rounded to the node's own input types: the node's own arithmetic error, free
    of the rounding of its inputs (which a sampler amplifies by the image width)."""
    from stn_deploy.export import graph64

    live = [i for i in node.input if i and i not in index.initializers and not index.is_const(i)]
    if any(i not in exact or not index.elem_type(i) for i in live):
        return None
    probe = geometry.submodel(index, [node], live, [node.output[0]])
    feeds = {i: exact[i].astype(tensor_dtype_to_np_dtype(index.elem_type(i))) for i in live}
    try:
        got = np.asarray(_session(probe).run(None, feeds)[0])
        want = graph64.run_float64(probe, feeds, [node.output[0]])[node.output[0]]
    except Exception:  # noqa: BLE001 - a node that cannot run alone is simply not judged
        return None
    return got, np.asarray(want, np.float64)


def node_errors(proto: onnx.ModelProto, x: np.ndarray) -> tuple[list[NodeError], dict]:
    """Every float node's own and total error against the float64 twin, in graph order."""
    from stn_deploy.export import graph64
    from stn_deploy.export.plugin_flavour import register_schemas

    register_schemas()
    proto = onnx.shape_inference.infer_shapes(proto)
    index = geometry.GraphIndex(proto)
    marked = _mark_all(proto)
    input_name = proto.graph.input[0].name
    dtype = np.float16 if index.elem_type(input_name) == onnx.TensorProto.FLOAT16 else np.float32
    session = _session(marked)
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {input_name: x.astype(dtype)})))
    floats = [o.name for o in marked.graph.output if index.elem_type(o.name) in _FLOAT_TYPES]
    exact = graph64.run_float64(proto, {input_name: x.astype(dtype)}, floats)
    exact[input_name] = x.astype(dtype).astype(np.float64)
    errors = []
    for node in proto.graph.node:
        out = node.output[0]
        if out not in exact or out not in got:
            continue
        alone = _alone(index, node, exact)
        inputs = [(i, _relative(got[i], exact[i])) for i in node.input if i in got and i in exact]
        worst = max(inputs, key=lambda t: t[1], default=("", 0.0))
        errors.append(NodeError(
            node=node.name or out, op_type=node.op_type, output=out,
            own=_relative(*alone) if alone is not None else 0.0,
            total=_relative(got[out], exact[out]), inputs=worst[1], worst_input=worst[0],
        ))
    return errors, {"index": index, "got": got, "exact": exact}


def _main_source(errors: list[NodeError], index: geometry.GraphIndex,
                 value: str) -> NodeError | None:
    """The node upstream of ``value`` with the largest own rounding error."""
    cone = set()
    stack = [value]
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or node.output[0] in cone:
            continue
        cone.add(node.output[0])
        stack.extend(i for i in node.input if i)
    upstream = [e for e in errors if e.output in cone and e.own > 0]
    return max(upstream, key=lambda e: e.own, default=None)


def _own_limit(index: geometry.GraphIndex, err: NodeError, node: onnx.NodeProto) -> float:
    """Rounding a node may add on its own; a sampler's grows with the image it reads, since
    fp32 unnormalisation ((x + 1) * W - 1) / 2 itself rounds by ~W * eps."""
    limit = OWN_RTOL.get(index.elem_type(err.output), OWN_RTOL[onnx.TensorProto.FLOAT])
    if geometry.samplers_of([node]):
        dims = index.shape(node.input[0]) or ()
        size = max((d for d in dims[2:] if isinstance(d, int)), default=1)
        limit *= max(1.0, size / 8)
    return limit


def _isolate(errors: list[NodeError], index: geometry.GraphIndex) -> str:
    for err in errors:
        limit = _own_limit(index, err, index.producer[err.output])
        if err.own > limit:
            return (f"node {err.node!r} ({err.op_type}) is wrong on its own: fed the exact "
                    f"(float64) inputs, its output {err.output!r} misses the exact one by "
                    f"{err.own:.3g} of its magnitude (rounding allows {limit:g})")
    growing = [e for e in errors if e.inputs > 0 and e.total > 10 * e.own]
    if not growing:
        return ("no node is wrong on its own and none amplifies its input error: the "
                "difference is the graph's accumulated rounding")
    worst = max(growing, key=lambda e: e.amplification)
    origin = _main_source(errors, index, worst.worst_input)
    source = (f" (accumulated upstream; the largest rounding of its own, {origin.own:.2g}, is "
              f"at node {origin.node!r}, {origin.op_type})" if origin else "")
    return (f"node {worst.node!r} ({worst.op_type}) only amplifies an upstream difference: fed "
            f"the exact inputs it matches to {worst.own:.2g} of its magnitude, but its input "
            f"{worst.worst_input!r} already differs by {worst.inputs:.2g}{source} and its "
            f"output by {worst.total:.2g} ({worst.amplification:.0f}x); no node is wrong on "
            "its own")


def locate(model: nn.Module, path: str, x: np.ndarray, tol: Tolerance, backend: str) -> str:
    """One sentence naming the suspect node (or what to run where it cannot be named here)."""
    if backend != "ort":
        return (
            f"the {backend} backend cannot mark intermediates here; localise with: polygraphy "
            f"run {path} --trt --onnxrt --trt-outputs mark all --onnx-outputs mark all"
        )
    from stn_deploy.export.contract import RULES
    from stn_deploy.export.plugin_flavour import register_schemas

    register_schemas()
    proto = onnx.load(path, load_external_data=False)
    for finding in RULES["fp16-geometry"](onnx.shape_inference.infer_shapes(proto)):
        return f"node {finding.node!r}: {finding.problem}"
    try:
        errors, extra = node_errors(proto, x)
    except (ExportError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        return f"could not isolate nodes here ({type(exc).__name__}: {exc})"
    return _semantics(model, proto, extra["exact"], x) or _isolate(errors, extra["index"])
