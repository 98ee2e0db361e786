"""The cuda-python wrapper against the real ``cuda.bindings.runtime``, on any machine.

test_trt_cuda.py drives the wrapper through a fake ``cudart``; this file checks that what the
wrapper calls exists in the real package with the shapes the fake assumes, so a rename in
cuda-python shows up here and not first on a GPU. Without a GPU the real calls return errors,
which is exactly the path worth testing: the wrapper must turn them into clear messages.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from stn_deploy.runtime import cuda_util
from stn_deploy.runtime.cuda_util import CudaError, CudaPython
from stn_deploy.runtime.session import BackendUnavailableError

rt = pytest.importorskip(
    "cuda.bindings.runtime", reason="cuda-python is not installed (pip install -e '.[dev]')"
)


def _names_used_on_rt() -> set[str]:
    """NAME in every ``self.rt.NAME`` / ``rt.NAME`` of runtime/cuda_util.py."""
    tree = ast.parse(inspect.getsource(cuda_util))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "rt") or (
            isinstance(owner, ast.Attribute) and owner.attr == "rt"
        ):
            names.add(node.attr)
    return names


def test_every_runtime_call_the_wrapper_makes_exists_in_cuda_python():
    names = _names_used_on_rt()
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaGraphInstantiate", "cudaGetDeviceCount"} <= names
    missing = sorted(n for n in names if not hasattr(rt, n))
    assert missing == []
    # Enum members reached by attribute or by name (CudaPython._copy uses getattr)
    assert rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal is not None
    for kind in ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"):
        assert hasattr(rt.cudaMemcpyKind, kind)
    assert int(rt.cudaHostAllocDefault) == 0


def test_the_binding_is_found_and_a_real_error_becomes_a_named_cuda_error():
    assert cuda_util._import_cudart() is rt
    wrapper = CudaPython(0, rt)
    # No device has this index, GPU or not; the error must come back by its CUDA name.
    with pytest.raises(CudaError, match=r"CUDA call failed: cudaError\w+"):
        wrapper._ok(rt.cudaSetDevice(9999))


def test_load_cuda_with_the_real_binding_returns_it_or_says_how_many_gpus_it_sees():
    err, count = rt.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        assert cuda_util.load_cuda(0, prefer="cuda-python").binding == "cuda-python"
        return
    with pytest.raises(BackendUnavailableError) as caught:
        cuda_util.load_cuda(0, prefer="cuda-python")
    message = str(caught.value)
    if int(err) == 0:
        assert "cuda-python sees 0 GPU(s)" in message
        return
    _, name = rt.cudaGetErrorName(err)
    assert f"cuda-python sees 0 GPU(s) ({name.decode()}" in message
    if name == b"cudaErrorInsufficientDriver":  # this CPU machine: no driver at all
        assert "pip install 'cuda-python>=12,<13'" in message
