"""ONNX Runtime backend of the Session interface (CPU by default, CUDA when asked and present)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stn_deploy.runtime.session import (
    BackendUnavailableError,
    Session,
    SessionError,
    TensorSpec,
)

__all__ = ["OrtSession"]

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _spec(arg) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise SessionError(f"tensor {arg.name!r} has type {arg.type}, which stn-deploy cannot feed")
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8",
               9: "bool"}

PLUGIN_ROUTES = ("native", "python")


class OrtSession(Session):
    """Runs an ONNX file with onnxruntime.

    ``threads`` sets intra-op threads (default: all cores). ``session_hooks`` are called with
    the ``SessionOptions`` before the model loads.

    Plugin-flavour graphs (nodes in domain ``stn``) run by ``plugin_route``: ``"native"``
    (default) splits the graph at the plugin nodes and runs our CPU kernels between ONNX Runtime
    stages (:mod:`stn_deploy.runtime.ort_stages`, on ``threads`` threads; with more than one,
    each stage's workers stop spinning when its run ends, unless a hook says otherwise, because
    the next stage and the kernels need those cores); ``"python"`` leaves
    the graph whole for onnxruntime-extensions' Python custom ops, which a session hook must
    register (``stn_deploy.plugins.ort_ops.register``): the slower route, kept to compare with.
    """

    backend = "ort"
    any_thread = True  # InferenceSession.run is thread-safe

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        session_hooks: Sequence[Callable[[object], None]] = (),
        plugin_route: str = "native",
    ) -> None:
        super().__init__()
        if plugin_route not in PLUGIN_ROUTES:
            raise ValueError(f"plugin_route must be one of {PLUGIN_ROUTES}, got {plugin_route!r}")
        self.model = model
        self.providers = list(providers)
        self.threads = threads
        self.session_hooks = list(session_hooks)
        self.plugin_route = plugin_route
        self._sess = None
        self._staged = None

    def _open(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from exc
        if not isinstance(self.model, bytes) and not Path(self.model).is_file():
            raise SessionError(
                f"ONNX model {str(self.model)!r} does not exist; "
                "export one with: stn-deploy export CKPT_DIR --out model.onnx"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for hook in self.session_hooks:
            hook(options)
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        staged = self.plugin_route == "native" and self._plugin_graph()
        try:
            if staged:
                self._open_staged(staged, options, ort)
                return
            self._sess = ort.InferenceSession(source, options, providers=self.providers)
        except SessionError:
            raise
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise SessionError(
                f"onnxruntime could not load the model: {exc}. "
                "Check it with: stn-deploy check MODEL.onnx"
            ) from exc
        self.inputs = tuple(_spec(a) for a in self._sess.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._sess.get_outputs())

    def _plugin_graph(self):
        """The ModelProto when the graph has ``stn`` plugin nodes, else None."""
        import onnx

        from stn_deploy.runtime.ort_stages import has_plugin_nodes

        try:
            proto = (onnx.load_from_string(self.model) if isinstance(self.model, bytes)
                     else onnx.load(str(self.model)))
        except Exception:  # noqa: BLE001 - not ours to judge: ONNX Runtime's load says what is wrong
            return None
        return proto if has_plugin_nodes(proto) else None

    def _open_staged(self, proto, options, ort) -> None:
        from stn_deploy.plugins.cpu import default_threads
        from stn_deploy.runtime.ort_stages import StagedGraph

        threads = self.threads or default_threads()
        if threads > 1 and not _has_config(options, _STOP_SPINNING):
            # Each stage has its own pool; idle workers of one spinning through the next stage
            # and our kernels took a core from them (kornia-affine, batch 32, 2 threads: 8.1 ms
            # with ORT's default, 6.5 ms stopping the spin at the end of each run).
            options.add_session_config_entry(_STOP_SPINNING, "1")

        def make(model_bytes: bytes):
            return ort.InferenceSession(model_bytes, options, providers=self.providers)

        self._staged = StagedGraph(proto, make, threads)
        self.inputs = tuple(_value_spec(v) for v in proto.graph.input
                            if v.name not in {i.name for i in proto.graph.initializer})
        self.outputs = tuple(_value_spec(v) for v in proto.graph.output)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self._staged is not None:
                values = self._staged.run(feeds)
            else:
                values = self._sess.run(None, feeds)
        except SessionError:
            raise
        except Exception as exc:
            raise SessionError(f"onnxruntime failed to run the batch: {exc}") from exc
        return dict(zip(self.output_names, values))

    def _close(self) -> None:
        self._sess = None
        self._staged = None


_STOP_SPINNING = "session.force_spinning_stop"


def _has_config(options, key: str) -> bool:
    try:
        options.get_session_config_entry(key)
    except RuntimeError:  # ORT's way of saying the key is not set
        return False
    return True


def _value_spec(value) -> TensorSpec:
    """TensorSpec of a graph input/output ValueInfoProto."""
    tensor = value.type.tensor_type
    dtype = _ONNX_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise SessionError(f"tensor {value.name!r} has ONNX element type {tensor.elem_type}, "
                           "which stn-deploy cannot feed")
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, shape, dtype)
