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


class OrtSession(Session):
    """Runs an ONNX file with onnxruntime.

    ``threads`` sets intra-op threads (default: all cores). ``session_hooks`` are called with
    the ``SessionOptions`` before the model loads; the plugin package uses this to register
    its CPU custom-op library for plugin-flavour graphs.
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
    ) -> None:
        super().__init__()
        self.model = model
        self.providers = list(providers)
        self.threads = threads
        self.session_hooks = list(session_hooks)
        self._sess = None

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
        try:
            self._sess = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise SessionError(
                f"onnxruntime could not load the model: {exc}. "
                "Check it with: stn-deploy check MODEL.onnx"
            ) from exc
        self.inputs = tuple(_spec(a) for a in self._sess.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._sess.get_outputs())

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._sess.run(None, feeds)
        except Exception as exc:
            raise SessionError(f"onnxruntime failed to run the batch: {exc}") from exc
        return dict(zip(self.output_names, values))

    def _close(self) -> None:
        self._sess = None
