"""TrtSession and its CUDA wrappers on a real GPU, with a stand-in for TensorRT (marker: gpu).

Everything TrtSession does around the engine is CUDA: pinned host buffers, device buffers, one
stream per execution context, copies in and out, one CUDA graph per batch size. The fakes in
test_trt_session.py check that bookkeeping on any machine; this file runs the same code on a
GPU with both bindings (cuda-python and torch), so without TensorRT only the engine itself is
left unexercised. The stand-in engine does real CUDA work on the stream it is given (a memset
and a pitched copy), so that work is captured into the graphs like a real engine's kernels:
logits[b] = [*input[b].ravel(), FILL].
"""

from __future__ import annotations

import json
import threading
import types

import numpy as np
import pytest

from stn_deploy.runtime import engine_meta
from stn_deploy.runtime import trt as trt_module
from stn_deploy.runtime.cuda_util import CudaError, load_cuda
from stn_deploy.runtime.trt import TrtSession

from .. import trt_fakes as fakes

pytestmark = pytest.mark.gpu
rt = pytest.importorskip("cuda.bindings.runtime", reason="the stand-in engine needs cuda-python")

SAMPLE = (1, 4, 4)
WIDTH = int(np.prod(SAMPLE)) + 1
FILL = np.frombuffer(b"\x3f" * 4, np.float32)[0]  # what cudaMemsetAsync(0x3f) leaves per float
BINDINGS = ("cuda-python", "torch")


def _ok(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    assert int(err) == 0, rt.cudaGetErrorName(err)[1]
    return rest[0] if rest else None


def _expected(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return np.concatenate([flat, np.full((len(x), 1), FILL, np.float32)], axis=1)


class GpuContext:
    REAL = "IExecutionContext"

    def __init__(self, engine: GpuEngine) -> None:
        self.engine, self.batch, self.addresses, self.runs = engine, 0, {}, 0
        self.lock = threading.Lock()

    def set_input_shape(self, name, shape) -> bool:
        self.batch = shape[0]
        return 1 <= shape[0] <= self.engine.max_batch

    def get_tensor_shape(self, name):
        return fakes.Dims((self.batch, *SAMPLE) if name == "input" else (self.batch, WIDTH))

    def set_tensor_address(self, name, memory) -> bool:
        ptr = memory
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        handle = stream_handle
        if not self.lock.acquire(blocking=False):
            raise AssertionError("one execution context used by two threads at once")
        try:
            out, src, row = self.addresses["logits"], self.addresses["input"], WIDTH - 1
            _ok(rt.cudaMemsetAsync(out, 0x3F, self.batch * WIDTH * 4, handle))
            _ok(rt.cudaMemcpy2DAsync(out, WIDTH * 4, src, row * 4, row * 4, self.batch,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, handle))
            self.runs += 1
        finally:
            self.lock.release()
        return True


class GpuEngine:
    REAL = "ICudaEngine"
    num_io_tensors = 2

    def __init__(self, max_batch: int) -> None:
        self.max_batch, self.contexts = max_batch, []

    def get_tensor_name(self, index):
        return ("input", "logits")[index]

    def get_tensor_mode(self, name):
        return fakes.TensorIOMode.INPUT if name == "input" else fakes.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return fakes.DataType.FLOAT

    def get_tensor_shape(self, name):
        return fakes.Dims((-1, *SAMPLE) if name == "input" else (-1, WIDTH))

    def get_tensor_profile_shape(self, name, profile_index):
        return [fakes.Dims((1, *SAMPLE)), fakes.Dims((self.max_batch, *SAMPLE)),
                fakes.Dims((self.max_batch, *SAMPLE))]  # fmt: skip

    def create_execution_context(self):
        self.contexts.append(GpuContext(self))
        return self.contexts[-1]


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """An engine file and a stand-in ``tensorrt`` whose engines run on the real GPU."""

    class Runtime:
        REAL = "Runtime"
        engine_host_code_allowed = False

        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            return GpuEngine(json.loads(data[4:])["max_batch"])

    trt = types.SimpleNamespace(
        __name__="tensorrt", __version__="10.0.0", Runtime=Runtime, nptype=fakes.nptype,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None}),
        TensorIOMode=fakes.TensorIOMode, get_plugin_registry=lambda: None,
    )  # fmt: skip
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda module=None: trt)
    monkeypatch.setattr(engine_meta, "default_plugin_locations", lambda root=None: [])
    monkeypatch.delenv(engine_meta.PLUGIN_ENV, raising=False)
    path = tmp_path / "gpu.engine"
    path.write_bytes(b"FAKE" + json.dumps({"max_batch": 8}).encode())
    return path


@pytest.mark.parametrize("binding", BINDINGS)
def test_round_trip_through_device_memory_and_a_replayed_graph(binding, rng):
    cuda = load_cuda(0, binding)
    cuda.set_device()
    info = cuda.info()
    assert info.name and info.compute_capability.count(".") == 1
    nbytes = 4096
    stream = cuda.stream()
    dev = cuda.device_alloc(nbytes)
    src, src_view = cuda.host_alloc(nbytes)
    dst, dst_view = cuda.host_alloc(nbytes)
    src_view[:] = rng.integers(0, 256, nbytes, dtype=np.uint8)
    dst_view[:] = 0
    cuda.h2d(dev, src, nbytes, stream)
    cuda.d2h(dst, dev, nbytes, stream)
    cuda.synchronize(stream)
    np.testing.assert_array_equal(dst_view, src_view)

    def work():
        cuda.h2d(dev, src, nbytes, stream)
        cuda.d2h(dst, dev, nbytes, stream)

    graph = cuda.capture(stream, work)
    for _ in range(3):  # each replay must copy the host buffer's current contents
        src_view[:] = rng.integers(0, 256, nbytes, dtype=np.uint8)
        dst_view[:] = 0
        cuda.launch(graph, stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(dst_view, src_view)
    cuda.free(("graph", graph), ("device", dev), ("host", src), ("host", dst), ("stream", stream))


def test_a_failed_allocation_is_a_cuda_error_and_leaves_no_error_behind():
    import torch

    cuda = load_cuda(0, "cuda-python")
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        cuda.device_alloc(1 << 52)  # 4 PiB
    assert int(rt.cudaGetLastError()[0]) == 0
    if torch.cuda.is_available():  # torch's own launch check must not report our failure
        assert float(torch.ones(4, device="cuda").sum()) == 4.0


@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("graphs", [True, False])
def test_session_runs_on_the_gpu_with_graphs_per_batch_size(stand_in, binding, graphs, rng):
    with TrtSession(stand_in, cuda=binding, cuda_graphs=graphs, sidecar="off") as sess:
        for batch in (3, 3, 8, 3, 1, 8, 20):  # 20 > max batch 8: split into 8, 8, 4
            x = rng.standard_normal((batch, *SAMPLE)).astype(np.float32)
            np.testing.assert_array_equal(sess.infer({"input": x})["logits"], _expected(x))
        (slot,) = sess._slots
        assert sorted(slot.graphs) == ([1, 3, 4, 8] if graphs else [])
        assert not slot.no_graph
        (context,) = sess._engine.contexts[1:]  # [0] sized the buffers
        # Graph replays do not call execute_async_v3: once per batch size when captured.
        assert context.runs == (4 + 4 if graphs else 9)


@pytest.mark.parametrize("binding", BINDINGS)
def test_contexts_serve_threads_at_once_without_mixing_requests(stand_in, binding):
    errors = []

    def client(sess, seed):
        local = np.random.default_rng(seed)
        try:
            for _ in range(40):
                x = local.standard_normal((int(local.integers(1, 9)), *SAMPLE)).astype(np.float32)
                np.testing.assert_array_equal(sess.infer({"input": x})["logits"], _expected(x))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    with TrtSession(stand_in, cuda=binding, contexts=3, sidecar="off") as sess:
        threads = [threading.Thread(target=client, args=(sess, seed)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        used = [c.runs for c in sess._engine.contexts[1:]]
    assert not errors, errors[0]
    assert len(used) == 3 and sum(used) > 0
