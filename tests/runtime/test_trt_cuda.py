"""The cuda-python wrapper's bookkeeping against a fake ``cudart`` (each call: (err, *values))."""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from stn_deploy.runtime import cuda_util
from stn_deploy.runtime.cuda_util import CudaError, CudaPython
from stn_deploy.runtime.session import BackendUnavailableError


class FakeCudart:
    cudaStreamNonBlocking = 1
    cudaHostAllocDefault = 0
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, devices=1, end_capture_error=0):
        self.devices, self.end_capture_error = devices, end_capture_error
        self.calls: list[tuple] = []
        self.buffers: list = []

    def _log(self, *call):
        self.calls.append(call)

    def cudaGetErrorName(self, err):
        return 0, {2: b"cudaErrorMemoryAllocation", 900: b"cudaErrorStreamCaptureInvalidated"}[err]

    def cudaGetLastError(self):
        self._log("get_last_error")
        return (0,)

    def cudaGetDeviceCount(self):
        return 0, self.devices

    def cudaSetDevice(self, device):
        self._log("set_device", device)
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\0\0\0", major=9, minor=0)

    def cudaDriverGetVersion(self):
        return 0, 12040

    def cudaMalloc(self, nbytes):
        return (2, None) if nbytes > 1 << 40 else (0, 0xD000)

    def cudaHostAlloc(self, nbytes, flags):
        buf = (ctypes.c_uint8 * nbytes)()
        self.buffers.append(buf)
        return 0, ctypes.addressof(buf)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self._log("memcpy", dst, src, nbytes, kind, stream)
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self._log("begin_capture", stream, mode)
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self._log("end_capture", stream)
        return self.end_capture_error, (None if self.end_capture_error else "graph")

    def cudaGraphInstantiate(self, graph, flags):
        return 0, f"exec({graph})"

    def cudaGraphDestroy(self, graph):
        self._log("graph_destroy", graph)
        return (0,)


def test_calls_unpack_and_errors_are_named():
    cuda = CudaPython(0, FakeCudart())
    assert cuda.device_alloc(64) == 0xD000
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        cuda.device_alloc(1 << 41)
    assert cuda.rt.calls[-1] == ("get_last_error",)  # the failure is not left for the next caller


def test_device_info_strips_the_c_string_and_formats_versions():
    info = CudaPython(0, FakeCudart()).info()
    assert (info.name, info.compute_capability, info.driver) == ("NVIDIA H100 80GB HBM3", "9.0",
                                                                 "12.4")  # fmt: skip


def test_pinned_buffer_is_a_numpy_view_of_the_allocation():
    rt = FakeCudart()
    ptr, view = CudaPython(0, rt).host_alloc(16)
    view[:4] = [1, 2, 3, 4]
    assert view.dtype == np.uint8 and view.shape == (16,)
    assert list(rt.buffers[0][:4]) == [1, 2, 3, 4] and ptr == ctypes.addressof(rt.buffers[0])


def test_copies_name_their_direction():
    rt = FakeCudart()
    cuda = CudaPython(0, rt)
    cuda.h2d(0xD000, 0x1000, 64, "s")
    cuda.d2h(0x1000, 0xD000, 32, "s")
    assert rt.calls == [
        ("memcpy", 0xD000, 0x1000, 64, 1, "s"),
        ("memcpy", 0x1000, 0xD000, 32, 2, "s"),
    ]


def test_set_device_once_per_thread():
    rt = FakeCudart()
    cuda = CudaPython(3, rt)
    cuda.set_device()
    cuda.set_device()
    assert rt.calls == [("set_device", 3)]


def test_capture_instantiates_and_destroys_the_template_graph():
    rt = FakeCudart()
    cuda = CudaPython(0, rt)
    ran = []
    assert cuda.capture("s", lambda: ran.append(1)) == "exec(graph)"
    assert ran == [1]
    assert [c[0] for c in rt.calls] == ["begin_capture", "end_capture", "graph_destroy"]


def test_capture_always_ends_even_when_the_work_fails():
    rt = FakeCudart()

    def work():
        raise CudaError("execute failed")

    with pytest.raises(CudaError, match="execute failed"):
        CudaPython(0, rt).capture("s", work)
    assert [c[0] for c in rt.calls] == ["begin_capture", "end_capture"]


def test_invalidated_capture_is_a_cuda_error():
    rt = FakeCudart(end_capture_error=900)
    with pytest.raises(CudaError, match="cudaErrorStreamCaptureInvalidated"):
        CudaPython(0, rt).capture("s", lambda: None)


def test_load_cuda_prefers_cuda_python_and_explains_a_gpu_less_machine(monkeypatch):
    monkeypatch.setattr(cuda_util, "_import_cudart", lambda: FakeCudart(devices=1))
    assert cuda_util.load_cuda(0).binding == "cuda-python"
    monkeypatch.setattr(cuda_util, "_import_cudart", lambda: FakeCudart(devices=0))
    with pytest.raises(BackendUnavailableError, match="cuda-python sees 0 GPU"):
        cuda_util.load_cuda(0, prefer="cuda-python")
    with pytest.raises(BackendUnavailableError, match="unknown CUDA binding 'cupy'"):
        cuda_util.load_cuda(0, prefer="cupy")
