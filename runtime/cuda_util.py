"""The few CUDA runtime calls the TensorRT session needs, over cuda-python or torch.cuda.

Why these bindings (and in this order):

1. ``cuda-python`` / ``cuda-bindings`` (``cuda.bindings.runtime``, older ``cuda.cudart``): NVIDIA's
   own one-to-one binding of the CUDA runtime API, the one TensorRT's Python samples use. It
   hands out the raw device pointers ``IExecutionContext.set_tensor_address`` wants, page-locked
   host memory (``cudaHostAlloc``), streams, and stream capture into CUDA graphs; it is a
   ~10 MB wheel with no allocator of its own, so memory use is exactly what we allocate.
2. ``torch.cuda``, when the CUDA build of torch is installed (the parity tests need it anyway):
   pinned tensors, ``torch.cuda.Stream`` (its ``cuda_stream`` handle goes straight to
   ``execute_async_v3``) and ``torch.cuda.CUDAGraph`` cover the same needs, at the price of
   torch's caching allocator holding the buffers.

Not chosen: PyCUDA (compiled at install time, and its own context handling fights the runtime
API's primary context TensorRT uses) and CuPy (a large extra dependency for five calls).

Every function here imports its binding lazily; nothing runs at import time.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stn_deploy.runtime.session import BackendUnavailableError, SessionError

__all__ = ["CudaError", "DeviceInfo", "Cuda", "load_cuda", "INSTALL_HINT"]

INSTALL_HINT = (
    "pip install cuda-python (or a CUDA build of torch) on a machine with an NVIDIA GPU and driver"
)


class CudaError(SessionError):
    """A CUDA runtime call failed."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.9"
    driver: str  # "12.4"


class Cuda:
    """Interface: streams, device + pinned buffers, async copies, graph capture. See subclasses."""

    binding = ""

    def __init__(self, device: int = 0) -> None:
        self.device = device

    def set_device(self) -> None: ...
    def info(self) -> DeviceInfo: ...
    def stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def device_alloc(self, nbytes: int) -> Any: ...
    def device_ptr(self, buf: Any) -> int: ...
    def host_alloc(self, nbytes: int) -> tuple[Any, np.ndarray]: ...
    def h2d(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None: ...
    def d2h(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None: ...
    def synchronize(self, stream: Any) -> None: ...
    def capture(self, stream: Any, work: Callable[[], None]) -> Any: ...
    def launch(self, graph: Any, stream: Any) -> None: ...
    def free(self, *objects: Any) -> None: ...


def _import_cudart():
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


class CudaPython(Cuda):
    """cuda-python's runtime binding: every call returns (cudaError_t, *results)."""

    binding = "cuda-python"

    def __init__(self, device: int = 0, cudart=None) -> None:
        super().__init__(device)
        self.rt = cudart or _import_cudart()
        self._local = threading.local()

    def _ok(self, result) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            # Clear the thread's last-error slot: a failure like cudaErrorMemoryAllocation is not
            # sticky, but left there it is what the next library to check it (torch's launch
            # check, TensorRT) reports as its own error.
            self.rt.cudaGetLastError()
            _, name = self.rt.cudaGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else name
            raise CudaError(f"CUDA call failed: {name}")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def set_device(self) -> None:
        # The current device is per thread; worker threads must select it themselves.
        if getattr(self._local, "device", None) != self.device:
            self._ok(self.rt.cudaSetDevice(self.device))
            self._local.device = self.device

    def info(self) -> DeviceInfo:
        prop = self._ok(self.rt.cudaGetDeviceProperties(self.device))
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else prop.name
        driver = self._ok(self.rt.cudaDriverGetVersion())
        return DeviceInfo(str(name).strip(), f"{prop.major}.{prop.minor}", _cuda_version(driver))

    def stream(self):
        return self._ok(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream) -> int:
        return int(stream)

    def device_alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def device_ptr(self, buf) -> int:
        return int(buf)

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        ptr = int(self._ok(self.rt.cudaHostAlloc(max(nbytes, 1), self.rt.cudaHostAllocDefault)))
        view = np.frombuffer((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr), np.uint8)
        return ptr, view

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream) -> None:
        kind_value = getattr(self.rt.cudaMemcpyKind, kind)
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind_value, stream))

    def h2d(self, dst, src, nbytes, stream) -> None:
        self._copy(int(dst), int(src), nbytes, "cudaMemcpyHostToDevice", stream)

    def d2h(self, dst, src, nbytes, stream) -> None:
        self._copy(int(dst), int(src), nbytes, "cudaMemcpyDeviceToHost", stream)

    def synchronize(self, stream) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream))

    def capture(self, stream, work: Callable[[], None]):
        """Capture ``work`` on ``stream`` into an instantiated graph; raise CudaError on failure."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._ok(self.rt.cudaStreamBeginCapture(stream, mode))
        try:
            work()
        finally:
            # End the capture whatever happened, or the stream stays unusable.
            err, graph = self.rt.cudaStreamEndCapture(stream)
        if int(err) != 0:
            self._ok((err,))
        try:
            try:
                result = self.rt.cudaGraphInstantiate(graph, 0)  # cuda-python >= 12
            except TypeError:  # cuda-python 11: (graph, log buffer, flags) -> 3 results
                result = self.rt.cudaGraphInstantiate(graph, b"", 0)[:2]
            return self._ok(result)
        finally:
            self.rt.cudaGraphDestroy(graph)

    def launch(self, graph, stream) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph, stream))

    def free(self, *objects) -> None:
        for kind, obj in objects:
            if obj is None:
                continue
            release = {
                "device": self.rt.cudaFree,
                "host": self.rt.cudaFreeHost,
                "stream": self.rt.cudaStreamDestroy,
                "graph": self.rt.cudaGraphExecDestroy,
            }[kind]
            release(obj)


class TorchCuda(Cuda):
    """The same calls over torch.cuda (buffers are uint8 tensors)."""

    binding = "torch"

    def __init__(self, device: int = 0) -> None:
        super().__init__(device)
        import torch

        self.torch = torch
        self.dev = torch.device("cuda", device)

    def set_device(self) -> None:
        self.torch.cuda.set_device(self.dev)

    def info(self) -> DeviceInfo:
        prop = self.torch.cuda.get_device_properties(self.dev)
        driver = self.torch.version.cuda or "unknown"
        return DeviceInfo(prop.name, f"{prop.major}.{prop.minor}", f"{driver} (torch's CUDA)")

    def stream(self):
        return self.torch.cuda.Stream(device=self.dev)

    def stream_handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def device_alloc(self, nbytes: int):
        return self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.dev)

    def device_ptr(self, buf) -> int:
        return int(buf.data_ptr())

    def host_alloc(self, nbytes: int):
        tensor = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, pin_memory=True)
        return tensor, tensor.numpy()

    def h2d(self, dst, src, nbytes, stream) -> None:
        with self.torch.cuda.stream(stream):
            dst[:nbytes].copy_(src[:nbytes], non_blocking=True)

    def d2h(self, dst, src, nbytes, stream) -> None:
        with self.torch.cuda.stream(stream):
            dst[:nbytes].copy_(src[:nbytes], non_blocking=True)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def capture(self, stream, work: Callable[[], None]):
        graph = self.torch.cuda.CUDAGraph()
        try:
            with self.torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                work()
        except RuntimeError as exc:
            raise CudaError(f"CUDA graph capture failed: {exc}") from exc
        return graph

    def launch(self, graph, stream) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()

    def free(self, *objects) -> None:
        # Tensors, streams and graphs are released when the last reference goes.
        return None


def _cuda_version(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def _no_device_reason(rt, err) -> str:
    """cudaGetDeviceCount's error by name, with the fix when the driver is too old for it."""
    _, name = rt.cudaGetErrorName(err)
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name == "cudaErrorInsufficientDriver":
        return (
            f"{name}: no NVIDIA driver, or one older than this cuda-python's CUDA; with a CUDA 12 "
            "driver: pip install 'cuda-python>=12,<13'"
        )
    return name


def load_cuda(device: int = 0, prefer: str | None = None) -> Cuda:
    """The CUDA binding to use (cuda-python first, then torch); BackendUnavailableError if none.

    ``prefer`` ("cuda-python" or "torch") picks one explicitly.
    """
    order = [prefer] if prefer else ["cuda-python", "torch"]
    reasons = []
    for name in order:
        if name == "cuda-python":
            rt = _import_cudart()
            if rt is None:
                reasons.append("cuda-python is not installed")
                continue
            err, count = rt.cudaGetDeviceCount()
            if int(err) != 0:
                reasons.append(f"cuda-python sees 0 GPU(s) ({_no_device_reason(rt, err)})")
                continue
            if count <= device:
                reasons.append(f"cuda-python sees {count} GPU(s)")
                continue
            return CudaPython(device, rt)
        if name == "torch":
            try:
                import torch
            except ImportError:
                reasons.append("torch is not installed")
                continue
            if not torch.cuda.is_available() or torch.cuda.device_count() <= device:
                reasons.append(f"torch {torch.__version__} sees no CUDA GPU {device}")
                continue
            return TorchCuda(device)
        reasons.append(f"unknown CUDA binding {name!r} (choose cuda-python or torch)")
    raise BackendUnavailableError(
        f"no usable CUDA binding for GPU {device}: " + "; ".join(reasons) + f". {INSTALL_HINT}"
    )
