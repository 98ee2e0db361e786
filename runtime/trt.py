"""TensorRT backend of the Session interface: a serialized engine run from a pool of contexts.

Written against the TensorRT 10/11 and TensorRT-RTX 1.x Python API (tensor-name I/O:
``num_io_tensors``, ``get_tensor_name/mode/shape/dtype``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Every call is checked against the real 10.16, 11.4
and RTX 1.7 bindings in CI (tests/test_trt_api.py); running an engine needs a GPU (not in CI).
The module is the one the sidecar names (an engine built with TensorRT-RTX opens with
``tensorrt_rtx``), else :func:`~stn_deploy.runtime.trt_module.import_tensorrt`'s choice.

How a request runs: the batch is split into chunks of at most the profile's max batch
(:func:`split_batches`); a free :class:`_Slot` is taken from the pool (one execution context,
one CUDA stream, device buffers sized for the max batch, page-locked host buffers); each chunk
is copied into the pinned input buffer, copied to the GPU, executed, and copied back.

I/O dtypes are the engine's, as ``inputs``/``outputs`` say (an engine built from an fp16 ONNX
has fp16 I/O, like ONNX Runtime on that file); float32 feeds for an fp16 input are converted on
the way in, so callers may feed float32 to any engine.

The first run of each batch size is eager; after it the H2D copy + execution + D2H copy are
captured into a CUDA graph for that batch size, and later requests of that size replay it (one
launch instead of dozens of kernel launches). A capture that fails (a plugin or tactic that is
not graph-safe) falls back to eager runs for that size. Several slots serve concurrent threads.

CUDA binding: see :mod:`stn_deploy.runtime.cuda_util` (cuda-python first, torch.cuda second).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stn_deploy.runtime import engine_meta
from stn_deploy.runtime.session import Session, SessionError, TensorSpec
from stn_deploy.runtime.trt_module import (
    TENSORRT_INSTALL_HINT,
    flavour_of,
    import_tensorrt,
    load_plugin_library,
)

__all__ = [
    "TrtSession",
    "split_batches",
    "import_tensorrt",
    "load_plugin_library",
    "TENSORRT_INSTALL_HINT",
]

log = logging.getLogger(__name__)

def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] chunks of at most ``max_batch`` covering ``range(n)`` in order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if n < 0:
        raise ValueError(f"batch size must be >= 0, got {n}")
    return [(start, min(start + max_batch, n)) for start in range(0, n, max_batch)]


def _numpy_dtype(trt, trt_dtype, name: str, engine_path: Path) -> np.dtype:
    """numpy's dtype for a tensor, or SessionError for types numpy cannot hold (BF16, FP8...)."""
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except TypeError as exc:  # trt.nptype raises for BF16, FP8, INT4, FP4, E8M0
        kind = getattr(trt_dtype, "name", str(trt_dtype))
        raise SessionError(
            f"tensor {name!r} of {str(engine_path)!r} has type {kind}, which numpy cannot hold "
            f"({exc}); stn-deploy serves engines with float32/float16 inputs and outputs: "
            "export with --precision fp32 or fp16 and rebuild with stn-deploy build"
        ) from exc


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype  # the engine's
    sample_shape: tuple[int, ...]  # per-sample shape; batch is dim 0
    nbytes_max: int


def _nbytes(t: _Tensor, batch: int) -> int:
    return batch * int(np.prod(t.sample_shape)) * t.dtype.itemsize


def _host_view(slot: _Slot, t: _Tensor, batch: int) -> np.ndarray:
    """The first ``batch`` samples of ``t``'s pinned host buffer, typed and shaped."""
    raw = slot.host[t.name][1][: _nbytes(t, batch)]
    return raw.view(t.dtype).reshape(batch, *t.sample_shape)


@dataclass
class _Slot:
    context: Any
    stream: Any
    device: dict[str, Any]
    host: dict[str, tuple[Any, np.ndarray]]
    graphs: dict[int, Any] = field(default_factory=dict)
    no_graph: set[int] = field(default_factory=set)
    shape_batch: int = -1


class TrtSession(Session):
    """Runs a TensorRT engine (``stn-deploy build`` output) on one GPU.

    ``plugin_lib``: the GridSample plugin library (default: $STN_PLUGIN_LIB, then the build
    folder; see :func:`engine_meta.locate_plugin_library`). ``contexts``: execution contexts
    (and streams) for concurrent requests. ``cuda_graphs``: capture one graph per batch size.
    ``sidecar``: ``check`` (mismatch -> error, missing sidecar -> warning), ``strict`` (missing
    -> error too) or ``off``. ``cuda``: force the CUDA binding (``cuda-python`` or ``torch``).
    """

    backend = "trt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        *,
        plugin_lib: str | os.PathLike | None = None,
        contexts: int = 1,
        cuda_graphs: bool = True,
        device: int = 0,
        sidecar: str = "check",
        cuda: str | None = None,
    ) -> None:
        super().__init__()
        if contexts < 1:
            raise ValueError(f"contexts must be >= 1, got {contexts}")
        if sidecar not in engine_meta.SIDECAR_MODES:
            raise ValueError(f"sidecar must be one of {engine_meta.SIDECAR_MODES}, got {sidecar!r}")
        self.engine_path = Path(engine_path)
        self.plugin_lib = plugin_lib
        self.n_contexts = contexts
        self.cuda_graphs = cuda_graphs
        self.device = device
        self.sidecar = sidecar
        self.cuda_binding = cuda
        self.meta: engine_meta.EngineMeta | None = None
        self.max_batch = 0
        self.loaded_plugin: Path | None = None
        self._cuda = None
        self._engine = None
        self._runtime = None
        self._tensors: list[_Tensor] = []
        self._slots: list[_Slot] = []
        self._pool: queue.LifoQueue[_Slot] = queue.LifoQueue()
        self._tried_plugins: list[str] = []

    # -- open ----------------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.engine_path.is_file():
            raise SessionError(
                f"engine {str(self.engine_path)!r} does not exist; build one with: "
                f"stn-deploy build MODEL.onnx --out {self.engine_path}"
            )
        self.meta = engine_meta.read_meta(self.engine_path) if self.sidecar != "off" else None
        trt = import_tensorrt(self.meta.tensorrt_module if self.meta else None)
        from stn_deploy.runtime.cuda_util import load_cuda

        self._cuda = load_cuda(self.device, self.cuda_binding)
        self._cuda.set_device()
        info = self._cuda.info()
        flavour = flavour_of(trt)
        running = engine_meta.RunningEnv(trt.__version__, info.name, info.compute_capability,
                                         flavour.module)  # fmt: skip
        data = self.engine_path.read_bytes()
        plugin = self._plugin_to_load()
        sha = hashlib.sha256(data).hexdigest() if self.meta else None
        for warning in engine_meta.check_meta(
            self.meta, running, self.engine_path, plugin_lib=plugin, engine_sha256=sha,
            mode=self.sidecar,
        ):  # fmt: skip
            log.warning(warning)
        self._deserialize(trt, data, plugin)
        self._describe_io(trt)
        try:
            for _ in range(self.n_contexts):
                self._add_slot()
        except BaseException:
            self._close()  # free the slots made so far
            raise
        for slot in self._slots:
            self._pool.put(slot)

    def _plugin_to_load(self) -> Path | None:
        """The plugin library to load, or None; raises PluginLibraryError when one is needed."""
        meta = self.meta
        needed = meta is not None and meta.flavour == "plugin" and not meta.plugin_embedded
        path, tried = engine_meta.locate_plugin_library(self.plugin_lib)
        if path is None and (needed or self.plugin_lib):
            what = f"engine {str(self.engine_path)!r}"
            message = engine_meta.missing_plugin_message(tried, what)
            if meta is not None:
                command = engine_meta.rebuild_command(meta, self.engine_path)
                message += f"; then, if needed, rebuild the engine: {command}"
            raise engine_meta.PluginLibraryError(message)
        self._tried_plugins = tried
        # Without a sidecar the flavour is unknown: load a library that is there, harmlessly.
        return path if (needed or self.plugin_lib or meta is None) else None

    def _deserialize(self, trt, data: bytes, plugin: Path | None) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        if plugin is not None:
            load_plugin_library(trt, plugin)
            self.loaded_plugin = plugin
        self._runtime = trt.Runtime(self._logger)
        if self.meta is not None and self.meta.version_compatible:
            # A version-compatible engine carries the lean runtime (and maybe our plugin) as
            # host code, which the runtime runs only when told to.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            hint = (
                f"if it uses the stn plugin, the library was not found (tried: "
                f"{', '.join(self._tried_plugins)}); "
                if plugin is None
                else ""
            )
            raise SessionError(
                f"{flavour_of(trt).label} could not deserialize {str(self.engine_path)!r}: "
                f"{hint}engines only load on the TensorRT version and GPU they were built for. "
                f"Rebuild with: stn-deploy build MODEL.onnx --out {self.engine_path}"
            )

    def _describe_io(self, trt) -> None:
        engine = self._engine
        inputs, outputs, tensors = [], [], []
        input_max: dict[str, tuple[int, ...]] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = _numpy_dtype(trt, engine.get_tensor_dtype(name), name, self.engine_path)
            shape = tuple(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape[1:]):
                raise SessionError(
                    f"tensor {name!r} of {str(self.engine_path)!r} has shape {list(shape)}: "
                    "only the batch dimension may be dynamic (build with stn-deploy build)"
                )
            if is_input:
                if shape[0] < 0:
                    _, _, max_shape = engine.get_tensor_profile_shape(name, 0)
                    input_max[name] = tuple(max_shape)
                else:  # a fixed-batch engine (e.g. from trtexec without shapes)
                    input_max[name] = shape
            spec = TensorSpec(name, tuple(None if d < 0 else d for d in shape), dtype.name)
            (inputs if is_input else outputs).append(spec)
            tensors.append(_Tensor(name, is_input, dtype, tuple(shape[1:]), 0))
        if not input_max:
            raise SessionError(f"engine {str(self.engine_path)!r} has no inputs")
        self.max_batch = min(shape[0] for shape in input_max.values())
        # Output sizes at the max batch come from a context with the max input shapes set.
        probe = engine.create_execution_context()
        if probe is None:
            raise SessionError(
                f"TensorRT could not create an execution context for {str(self.engine_path)!r} "
                "(out of GPU memory? see the TensorRT log above); free GPU memory or build "
                "with a smaller --max-batch"
            )
        for name, max_shape in input_max.items():
            if not probe.set_input_shape(name, max_shape):
                raise SessionError(
                    f"TensorRT refused input {name!r} of {str(self.engine_path)!r} at its "
                    f"profile's maximum shape {list(max_shape)} (see the TensorRT log above); "
                    "rebuild the engine with: stn-deploy build MODEL.onnx --out "
                    f"{self.engine_path}"
                )
        for tensor in tensors:
            if tensor.is_input:
                full = input_max[tensor.name]
            else:
                full = tuple(probe.get_tensor_shape(tensor.name))
            tensor.sample_shape = tuple(full[1:])
            tensor.nbytes_max = int(np.prod(full)) * tensor.dtype.itemsize
        del probe
        self._tensors = tensors
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)

    def _add_slot(self) -> None:
        cuda = self._cuda
        context = self._engine.create_execution_context()
        if context is None:
            raise SessionError("TensorRT could not create an execution context (GPU memory?)")
        slot = _Slot(context, cuda.stream(), {}, {})
        self._slots.append(slot)  # registered first, so _close also frees a half-made slot
        for t in self._tensors:
            slot.device[t.name] = cuda.device_alloc(t.nbytes_max)
            slot.host[t.name] = cuda.host_alloc(t.nbytes_max)
            if not context.set_tensor_address(t.name, cuda.device_ptr(slot.device[t.name])):
                raise SessionError(f"TensorRT refused the device address of {t.name!r}")

    # -- infer ---------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """'fp16' or 'fp32': the sidecar's, else what the engine's I/O types say."""
        if self.meta is not None:
            return self.meta.precision
        return "fp16" if any(s.dtype == "float16" for s in self.inputs) else "fp32"

    def check_feeds(self, feeds):
        """As the base class, but float32 is also accepted for an fp16 input (and converted)."""
        half = {s.name for s in self.inputs if s.dtype == "float16"}
        feeds = {
            name: value.astype(np.float16)
            if name in half and isinstance(value, np.ndarray) and value.dtype == np.float32
            else value
            for name, value in feeds.items()
        }
        return super().check_feeds(feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in self.outputs}
        with self._slot() as slot:
            for start, stop in split_batches(n, self.max_batch):
                chunk = {name: array[start:stop] for name, array in feeds.items()}
                for name, value in self._run_chunk(slot, chunk, stop - start).items():
                    parts[name].append(value)
        return {name: np.concatenate(values) if len(values) > 1 else values[0]
                for name, values in parts.items()}  # fmt: skip

    @contextlib.contextmanager
    def _slot(self) -> Iterator[_Slot]:
        """Take a free context (blocking while all are busy) and give it back afterwards."""
        slot = self._pool.get()
        try:
            self._cuda.set_device()
            yield slot
        finally:
            self._pool.put(slot)

    def _run_chunk(self, slot: _Slot, chunk: dict[str, np.ndarray], batch: int) -> dict:
        cuda = self._cuda
        for t in self._tensors:
            if t.is_input:
                _host_view(slot, t, batch)[...] = chunk[t.name]  # converts fp32 -> fp16 if needed
        graph = slot.graphs.get(batch)
        self._set_shapes(slot, batch)
        if graph is not None:
            cuda.launch(graph, slot.stream)
        else:
            self._enqueue(slot, batch)
        cuda.synchronize(slot.stream)
        outputs = {}
        for t in self._tensors:
            if not t.is_input:
                # A copy: the pinned buffer is reused by the next request.
                outputs[t.name] = _host_view(slot, t, batch).copy()
        if graph is None and self.cuda_graphs and batch not in slot.no_graph:
            self._capture(slot, batch)
        return outputs

    def _set_shapes(self, slot: _Slot, batch: int) -> None:
        if slot.shape_batch == batch:
            return
        for t in self._tensors:
            if t.is_input and not slot.context.set_input_shape(t.name, (batch, *t.sample_shape)):
                raise SessionError(
                    f"TensorRT refused input {t.name!r} with batch {batch}; the engine's profile "
                    f"allows 1..{self.max_batch}"
                )
        slot.shape_batch = batch

    def _enqueue(self, slot: _Slot, batch: int) -> None:
        cuda, handle = self._cuda, self._cuda.stream_handle(slot.stream)
        for t in self._tensors:
            if t.is_input:
                nbytes = _nbytes(t, batch)
                cuda.h2d(slot.device[t.name], slot.host[t.name][0], nbytes, slot.stream)
        if not slot.context.execute_async_v3(handle):
            raise SessionError(
                f"TensorRT failed to run batch {batch} (execute_async_v3 returned False; "
                "see the TensorRT log above)"
            )
        for t in self._tensors:
            if not t.is_input:
                nbytes = _nbytes(t, batch)
                cuda.d2h(slot.host[t.name][0], slot.device[t.name], nbytes, slot.stream)

    def _capture(self, slot: _Slot, batch: int) -> None:
        """Capture copy-in + execute + copy-out for ``batch``; on failure stay eager for it."""
        from stn_deploy.runtime.cuda_util import CudaError

        self._set_shapes(slot, batch)
        try:
            slot.graphs[batch] = self._cuda.capture(slot.stream, lambda: self._enqueue(slot, batch))
        except (CudaError, SessionError) as exc:
            slot.no_graph.add(batch)
            log.info("CUDA graph capture failed for batch %d (%s); running it eagerly", batch, exc)

    # -- close ---------------------------------------------------------------------------------
    def _close(self) -> None:
        cuda = self._cuda
        for slot in self._slots:
            if cuda is None:
                break
            cuda.synchronize(slot.stream)
            cuda.free(*(("graph", g) for g in slot.graphs.values()))
            cuda.free(*(("device", buf) for buf in slot.device.values()))
            cuda.free(*(("host", buf) for buf, _ in slot.host.values()))
            cuda.free(("stream", slot.stream))
        self._slots = []
        self._pool = queue.LifoQueue()
        self._engine = None
        self._runtime = None
