"""TrtSession's own logic on the CPU: batching, graphs, dtypes, pool, errors, via fakes.

The fakes below stand in for the tensorrt module and the CUDA binding with the same call
signatures TrtSession uses (tensor-name I/O, set_tensor_address, execute_async_v3; stream
copies, graph capture). "Device memory" is numpy; a captured graph replays recorded operations.
They test what this code does with the API, not TensorRT itself: that is test_engine_trt.py,
which needs a GPU.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import types

import numpy as np
import pytest

from stn_deploy.runtime import cuda_util, engine_meta
from stn_deploy.runtime import trt as trt_module
from stn_deploy.runtime.cuda_util import Cuda, CudaError, DeviceInfo
from stn_deploy.runtime.engine_meta import BatchProfile, EngineMeta
from stn_deploy.runtime.session import BackendUnavailableError, InputError, SessionError
from stn_deploy.runtime.trt import TrtSession, split_batches

from .. import trt_fakes as fakes

WEIGHTS = np.array([1.0, -2.0, 0.5], np.float32)  # logits[b, k] = sum(x[b]) * WEIGHTS[k]
SAMPLE = (1, 4, 4)


def _expected(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).sum(1, dtype=np.float32)[:, None] * WEIGHTS


# -- fake CUDA ---------------------------------------------------------------------------------
class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.recording: list | None = None


class FakeCuda(Cuda):
    binding = "fake"

    def __init__(self) -> None:
        super().__init__(0)
        self.mem: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self.next_ptr = 4096
        self.fail_capture = False
        self.launches = 0
        self.freed: list[tuple[str, object]] = []

    def _new(self, nbytes: int) -> int:
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 256
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def submit(self, stream: FakeStream, op) -> None:
        if stream.recording is not None:
            stream.recording.append(op)
        else:
            op()

    def set_device(self) -> None:
        pass

    def info(self) -> DeviceInfo:
        return DeviceInfo("Fake GPU", "8.9", "12.4")

    def stream(self) -> FakeStream:
        stream = FakeStream(len(self.streams) + 1)
        self.streams[stream.handle] = stream
        return stream

    def stream_handle(self, stream: FakeStream) -> int:
        return stream.handle

    def device_alloc(self, nbytes: int) -> int:
        return self._new(nbytes)

    def device_ptr(self, buf: int) -> int:
        return buf

    def host_alloc(self, nbytes: int):
        ptr = self._new(nbytes)
        return ptr, self.mem[ptr]

    def _copy(self, dst: int, src: int, nbytes: int, stream: FakeStream) -> None:
        def op():
            self.mem[dst][:nbytes] = self.mem[src][:nbytes]

        self.submit(stream, op)

    h2d = d2h = _copy

    def synchronize(self, stream) -> None:
        pass

    def capture(self, stream: FakeStream, work):
        if self.fail_capture:
            raise CudaError("CUDA call failed: cudaErrorStreamCaptureUnsupported")
        stream.recording = []
        try:
            work()
        finally:
            ops, stream.recording = stream.recording, None
        return ops

    def launch(self, graph, stream) -> None:
        self.launches += 1
        for op in graph:
            op()

    def free(self, *objects) -> None:
        self.freed.extend(objects)


# -- fake TensorRT -----------------------------------------------------------------------------
class FakeContext:
    REAL = "IExecutionContext"

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.busy = False
        self.executed: list[int] = []

    def set_input_shape(self, name, shape) -> bool:
        assert name == "input"
        if not 1 <= shape[0] <= self.engine.max_batch:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return fakes.Dims(self.shape if name == "input" else (self.shape[0], 3))

    def set_tensor_address(self, name, memory) -> bool:
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        handle = stream_handle
        cuda = self.engine.cuda
        batch, dtype = self.shape[0], self.engine.dtype
        n_in = batch * int(np.prod(SAMPLE)) * dtype.itemsize

        def op():
            if self.busy:
                raise AssertionError("one execution context used by two threads at once")
            self.busy = True
            time.sleep(0.0005)
            x = cuda.mem[self.addresses["input"]][:n_in].view(dtype).reshape(batch, *SAMPLE)
            y = _expected(x.astype(np.float32)).astype(dtype)
            out = cuda.mem[self.addresses["logits"]]
            out[: y.nbytes] = y.reshape(-1).view(np.uint8)
            self.executed.append(batch)
            self.busy = False

        cuda.submit(cuda.streams[handle], op)
        return True


class FakeEngine:
    REAL = "ICudaEngine"
    num_io_tensors = 2
    TRT_TYPES = {"float32": fakes.DataType.FLOAT, "float16": fakes.DataType.HALF,
                 "bfloat16": fakes.DataType.BF16}  # fmt: skip

    def __init__(self, cuda: FakeCuda, dtype, max_batch: int) -> None:
        self.cuda, self.max_batch = cuda, max_batch
        self.trt_dtype = self.TRT_TYPES[dtype]
        self.dtype = np.dtype(fakes.NUMPY.get(self.trt_dtype, np.float32))
        self.contexts: list[FakeContext] = []
        self.no_context = False

    def get_tensor_name(self, index: int) -> str:
        return ("input", "logits")[index]

    def get_tensor_mode(self, name):
        return fakes.TensorIOMode.INPUT if name == "input" else fakes.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt_dtype

    def get_tensor_shape(self, name):
        return fakes.Dims((-1, *SAMPLE) if name == "input" else (-1, 3))

    def get_tensor_profile_shape(self, name, profile_index):
        return [fakes.Dims((1, *SAMPLE)), fakes.Dims((min(4, self.max_batch), *SAMPLE)),
                fakes.Dims((self.max_batch, *SAMPLE))]  # fmt: skip

    def create_execution_context(self) -> FakeContext | None:
        if self.no_context:
            return None  # what TensorRT answers when it cannot allocate one
        context = FakeContext(self)
        self.contexts.append(context)
        return context


class FakeTrt(types.SimpleNamespace):
    TensorIOMode = fakes.TensorIOMode


def _fake_trt(cuda: FakeCuda, version: str = "10.3.0"):
    loaded: list[str] = []

    registry = FakeRegistry(loaded)
    return FakeTrt(
        __name__="tensorrt_rtx" if version.startswith("1.") else "tensorrt",
        __version__=version,
        Logger=FakeLogger,
        Runtime=lambda logger: FakeRuntime(cuda),
        get_plugin_registry=lambda: registry,
        nptype=fakes.nptype,
        loaded=loaded,
    )


class FakeLogger:
    REAL = "Logger"
    WARNING = 2

    def __init__(self, min_severity=2) -> None:
        self.min_severity = min_severity


class FakeRegistry:
    REAL = "IPluginRegistry"

    def __init__(self, loaded: list[str]) -> None:
        self.loaded = loaded

    def load_library(self, plugin_path: str):
        self.loaded.append(plugin_path)
        return None if "broken" in plugin_path else object()


class FakeRuntime:
    REAL = "Runtime"
    engine_host_code_allowed = False

    def __init__(self, cuda) -> None:
        self.cuda = cuda
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        if not serialized_engine.startswith(b"FAKE"):
            return None
        header = json.loads(serialized_engine[4:])
        engine = FakeEngine(self.cuda, header["dtype"], header["max_batch"])
        engine.no_context = header.get("no_context", False)
        return engine


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """(FakeCuda, fake trt) wired into TrtSession; no plugin library anywhere."""
    cuda = FakeCuda()
    trt = _fake_trt(cuda)
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda module=None: trt)
    monkeypatch.setattr(cuda_util, "load_cuda", lambda device=0, prefer=None: cuda)
    monkeypatch.setattr(engine_meta, "default_plugin_locations", lambda root=None: [])
    monkeypatch.delenv(engine_meta.PLUGIN_ENV, raising=False)
    return cuda, trt


def _engine(tmp_path, dtype="float32", max_batch=4, name="m.engine", **header):
    path = tmp_path / name
    header = {"dtype": dtype, "max_batch": max_batch, **header}
    path.write_bytes(b"FAKE" + json.dumps(header).encode())
    return path


def _meta(path, **changes) -> EngineMeta:
    base = dict(
        tensorrt_version="10.3.0", gpu_name="Fake GPU", compute_capability="8.9",
        onnx_path="m.onnx", onnx_sha256="00" * 32, precision="fp32", flavour="standard",
        input_name="input", input_shape=SAMPLE, batch=BatchProfile(1, 4, 4),
        engine_sha256=engine_meta.sha256_file(path),
    )  # fmt: skip
    base.update(changes)
    return EngineMeta(**base)


# -- split_batches -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "max_batch", "expected"),
    [
        (0, 4, []),
        (1, 4, [(0, 1)]),
        (4, 4, [(0, 4)]),
        (5, 4, [(0, 4), (4, 5)]),
        (9, 3, [(0, 3), (3, 6), (6, 9)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_split_batches(n, max_batch, expected):
    assert split_batches(n, max_batch) == expected


def test_split_batches_covers_any_request_in_order(rng):
    for _ in range(50):
        n, max_batch = int(rng.integers(0, 1000)), int(rng.integers(1, 300))
        chunks = split_batches(n, max_batch)
        assert [i for a, b in chunks for i in range(a, b)] == list(range(n))
        assert all(0 < b - a <= max_batch for a, b in chunks)
        assert len(chunks) == -(-n // max_batch)


@pytest.mark.parametrize(("n", "max_batch"), [(5, 0), (-1, 4)])
def test_split_batches_rejects_nonsense(n, max_batch):
    with pytest.raises(ValueError):
        split_batches(n, max_batch)


# -- without tensorrt --------------------------------------------------------------------------
def test_missing_tensorrt_says_how_to_install(no_tensorrt, monkeypatch, tmp_path):
    with pytest.raises(BackendUnavailableError, match="pip install tensorrt") as info:
        trt_module.import_tensorrt()
    assert "NVIDIA GPU" in str(info.value)
    with pytest.raises(BackendUnavailableError, match="pip install tensorrt"):
        TrtSession(_engine(tmp_path)).open()


def test_open_session_on_an_engine_without_tensorrt(no_tensorrt, monkeypatch, tmp_path):
    from stn_deploy.runtime import open_session

    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        open_session(_engine(tmp_path))  # 'auto' picks trt for .engine


def test_no_cuda_binding_names_both_and_the_install(monkeypatch):
    monkeypatch.setattr(cuda_util, "_import_cudart", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailableError) as info:
        cuda_util.load_cuda(0)
    message = str(info.value)
    assert "cuda-python is not installed; torch is not installed" in message
    assert "pip install cuda-python" in message


def test_cpu_torch_is_no_cuda_binding(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(cuda_util, "_import_cudart", lambda: None)
    expected = re.escape(f"torch {torch.__version__} sees no CUDA GPU 0")
    with pytest.raises(BackendUnavailableError, match=expected):
        cuda_util.load_cuda(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"contexts": 0}, "contexts must be >= 1"), ({"sidecar": "x"}, "sidecar must be one of")],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrtSession(tmp_path / "m.engine", **kwargs)


# -- running, with the fakes -------------------------------------------------------------------
def test_large_request_is_split_into_profile_sized_chunks(fake, tmp_path, rng):
    cuda, _ = fake
    x = rng.standard_normal((10, *SAMPLE)).astype(np.float32)
    with TrtSession(_engine(tmp_path, max_batch=4), cuda_graphs=False) as sess:
        assert sess.max_batch == 4
        assert [s.describe() for s in sess.inputs] == ["input[?,1,4,4] float32"]
        assert [s.describe() for s in sess.outputs] == ["logits[?,3] float32"]
        out = sess.infer({"input": x})["logits"]
        (context,) = sess._engine.contexts[1:]  # [0] is the probe that sized the buffers
    np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-5)
    assert context.executed == [4, 4, 2]


def test_graph_is_captured_per_batch_size_and_replayed(fake, tmp_path, rng):
    cuda, _ = fake
    with TrtSession(_engine(tmp_path, max_batch=8)) as sess:
        context = sess._engine.contexts[1]
        for batch in (3, 3, 5, 3, 5):
            x = rng.standard_normal((batch, *SAMPLE)).astype(np.float32)
            np.testing.assert_allclose(sess.infer({"input": x})["logits"], _expected(x),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
        (slot,) = sess._slots
        assert sorted(slot.graphs) == [3, 5]
    assert cuda.launches == 3  # the 2nd and 4th batch-3 requests and the 2nd batch-5 one
    assert context.executed == [3, 3, 5, 3, 5]  # eager + replays all computed


def test_failed_capture_falls_back_to_eager_runs(fake, tmp_path, rng, caplog):
    cuda, _ = fake
    cuda.fail_capture = True
    with (
        caplog.at_level(logging.INFO, logger="stn_deploy.runtime.trt"),
        TrtSession(_engine(tmp_path)) as sess,
    ):
        for _ in range(3):
            x = rng.standard_normal((2, *SAMPLE)).astype(np.float32)
            np.testing.assert_allclose(sess.infer({"input": x})["logits"], _expected(x),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
        (slot,) = sess._slots
        assert slot.graphs == {} and slot.no_graph == {2}
    assert cuda.launches == 0
    assert sum("capture failed for batch 2" in r.message for r in caplog.records) == 1


def test_fp16_engine_takes_float32_or_float16_and_returns_float16(fake, tmp_path, rng):
    x = rng.standard_normal((3, *SAMPLE)).astype(np.float32)
    with TrtSession(_engine(tmp_path, dtype="float16")) as sess:
        assert sess.inputs[0].dtype == "float16" and sess.precision == "fp16"
        from_32 = sess.infer({"input": x})["logits"]
        from_16 = sess.infer({"input": x.astype(np.float16)})["logits"]
        with pytest.raises(InputError, match="dtype float64"):
            sess.infer({"input": x.astype(np.float64)})
    assert from_32.dtype == np.float16
    np.testing.assert_array_equal(from_32, from_16)
    np.testing.assert_allclose(from_32, _expected(x.astype(np.float16).astype(np.float32)),
                               rtol=2e-2, atol=2e-2)  # fmt: skip


def test_concurrent_requests_use_separate_contexts(fake, tmp_path):
    errors, results = [], {}

    def worker(seed: int, sess: TrtSession) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(15):
                x = local.standard_normal((int(local.integers(1, 7)), *SAMPLE)).astype(np.float32)
                got = sess.infer({"input": x})["logits"]
                np.testing.assert_allclose(got, _expected(x), rtol=1e-5, atol=1e-5)
            results[seed] = True
        except Exception as exc:  # collected and asserted on below
            errors.append(exc)

    with TrtSession(_engine(tmp_path, max_batch=4), contexts=3) as sess:
        threads = [threading.Thread(target=worker, args=(i, sess)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        contexts = sess._engine.contexts
    used = [c for c in contexts[1:] if c.executed]
    assert errors == [] and len(results) == 6
    assert len(contexts) == 4 and 1 <= len(used) <= 3
    assert sum(len(c.executed) for c in used) >= 6 * 15


def test_close_frees_every_buffer_stream_and_graph(fake, tmp_path, rng):
    cuda, _ = fake
    sess = TrtSession(_engine(tmp_path), contexts=2).open()
    x = rng.standard_normal((2, *SAMPLE)).astype(np.float32)
    sess.infer({"input": x})
    sess.infer({"input": x})
    sess.close()
    kinds = sorted(kind for kind, _ in cuda.freed)
    assert kinds.count("device") == 4 and kinds.count("host") == 4
    assert kinds.count("stream") == 2 and kinds.count("graph") == 1


# -- opening: files, sidecar, plugin -----------------------------------------------------------
def test_missing_engine_says_how_to_build(fake, tmp_path):
    with pytest.raises(SessionError, match="stn-deploy build MODEL.onnx --out .*nope.engine"):
        TrtSession(tmp_path / "nope.engine").open()


def test_undeserializable_engine(fake, tmp_path):
    path = tmp_path / "bad.engine"
    path.write_bytes(b"garbage")
    with pytest.raises(SessionError, match="could not deserialize") as info:
        TrtSession(path).open()
    assert "if it uses the stn plugin, the library was not found" in str(info.value)


def test_missing_sidecar_warns_and_strict_mode_refuses(fake, tmp_path, caplog):
    path = _engine(tmp_path)
    with caplog.at_level(logging.WARNING, logger="stn_deploy.runtime.trt"):
        TrtSession(path).open().close()
    assert any("has no sidecar" in r.message for r in caplog.records)
    with pytest.raises(engine_meta.SidecarError, match="has no sidecar"):
        TrtSession(path, sidecar="strict").open()


def test_sidecar_mismatch_refuses_with_the_rebuild_command(fake, tmp_path):
    path = _engine(tmp_path)
    engine_meta.write_meta(path, _meta(path, tensorrt_version="10.1.0", precision="fp16"))
    with pytest.raises(engine_meta.EngineMismatchError) as info:
        TrtSession(path).open()
    message = str(info.value)
    assert "built with TensorRT 10.1.0, this machine runs TensorRT 10.3.0" in message
    assert f"stn-deploy build m.onnx --out {path} --precision fp16 --min-batch 1" in message
    engine_meta.write_meta(path, _meta(path))
    with TrtSession(path) as sess:
        assert sess.meta.tensorrt_version == "10.3.0"


def test_sidecar_of_another_engine_is_refused(fake, tmp_path):
    path = _engine(tmp_path)
    engine_meta.write_meta(path, _meta(path, engine_sha256="ab" * 32))
    with pytest.raises(engine_meta.EngineMismatchError, match="not the one the sidecar describes"):
        TrtSession(path).open()


def test_plugin_engine_without_library_names_paths_and_commands(fake, tmp_path):
    path = _engine(tmp_path)
    meta = _meta(path, flavour="plugin", plugin_lib="/b/libstn_gridsample_plugin.so",
                 plugin_sha256="11" * 32)  # fmt: skip
    engine_meta.write_meta(path, meta)
    with pytest.raises(engine_meta.PluginLibraryError) as info:
        TrtSession(path, plugin_lib=tmp_path / "absent.so").open()
    message = str(info.value)
    assert f"tried: {tmp_path / 'absent.so'} (--plugin-lib)" in message
    assert "stn-deploy plugins build" in message
    assert engine_meta.rebuild_command(meta, path) in message


def test_plugin_library_is_loaded_and_checked(fake, tmp_path):
    _, trt = fake
    path = _engine(tmp_path)
    lib = tmp_path / "libstn_gridsample_plugin.so"
    lib.write_bytes(b"plugin build 1")
    meta = _meta(path, flavour="plugin", plugin_lib=str(lib),
                 plugin_sha256=engine_meta.sha256_file(lib))  # fmt: skip
    engine_meta.write_meta(path, meta)
    with TrtSession(path, plugin_lib=lib) as sess:
        assert sess.loaded_plugin == lib.resolve()
    assert trt.loaded == [str(lib.resolve())]
    lib.write_bytes(b"plugin build 2")
    with pytest.raises(engine_meta.EngineMismatchError, match="has sha256"):
        TrtSession(path, plugin_lib=lib).open()


def test_plugin_library_tensorrt_cannot_load(fake, tmp_path):
    path = _engine(tmp_path)
    lib = tmp_path / "broken.so"
    lib.write_bytes(b"x")
    with pytest.raises(engine_meta.PluginLibraryError, match="could not load the plugin library"):
        TrtSession(path, plugin_lib=lib, sidecar="off").open()


def test_plugin_library_is_loaded_once_per_process(fake, tmp_path):
    _, trt = fake
    lib = tmp_path / "libstn_gridsample_plugin.so"
    lib.write_bytes(b"x")
    engine = _engine(tmp_path)
    first = TrtSession(engine, plugin_lib=lib, sidecar="off").open()
    second = TrtSession(engine, plugin_lib=lib, sidecar="off").open()
    assert first.loaded_plugin == second.loaded_plugin == lib.resolve()
    assert trt.loaded == [str(lib.resolve())]  # registering its creators twice would fail
    first.close()
    second.close()


def test_a_failing_context_frees_what_was_made(fake, tmp_path, monkeypatch):
    cuda, _ = fake
    monkeypatch.setattr(FakeContext, "set_tensor_address", lambda self, name, ptr: False)
    with pytest.raises(SessionError, match="refused the device address of 'input'"):
        TrtSession(_engine(tmp_path), contexts=2).open()
    assert sorted(kind for kind, _ in cuda.freed) == ["device", "host", "stream"]


def test_only_the_batch_may_be_dynamic(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeEngine, "get_tensor_shape",
                        lambda self, name: (-1, 1, -1, 4) if name == "input" else (-1, 3))
    with pytest.raises(SessionError, match=r"shape \[-1, 1, -1, 4\]: only the batch dimension"):
        TrtSession(_engine(tmp_path)).open()


# -- results TensorRT can refuse -----------------------------------------------------------------
def test_no_execution_context_is_an_error_with_the_fix(fake, tmp_path):
    path = _engine(tmp_path, no_context=True)
    with pytest.raises(SessionError) as info:
        TrtSession(path, sidecar="off").open()
    assert str(info.value) == (
        f"TensorRT could not create an execution context for {str(path)!r} (out of GPU memory? "
        "see the TensorRT log above); free GPU memory or build with a smaller --max-batch"
    )


def test_refused_max_shape_on_the_probe_context(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeContext, "set_input_shape", lambda self, name, shape: False)
    path = _engine(tmp_path, max_batch=4)
    with pytest.raises(SessionError) as info:
        TrtSession(path, sidecar="off").open()
    assert f"TensorRT refused input 'input' of {str(path)!r} at its profile's maximum shape " \
        "[4, 1, 4, 4]" in str(info.value)
    assert f"stn-deploy build MODEL.onnx --out {path}" in str(info.value)


def test_a_type_numpy_cannot_hold_is_explained(fake, tmp_path):
    path = _engine(tmp_path, dtype="bfloat16")
    with pytest.raises(SessionError) as info:
        TrtSession(path, sidecar="off").open()
    message = str(info.value)
    assert f"tensor 'input' of {str(path)!r} has type BF16, which numpy cannot hold" in message
    assert "export with --precision fp32 or fp16 and rebuild with stn-deploy build" in message


def test_engine_of_the_other_tensorrt_is_refused(fake, tmp_path):
    path = _engine(tmp_path)
    engine_meta.write_meta(path, _meta(path, tensorrt_module="tensorrt_rtx",
                                       tensorrt_version="1.7.1.116"))  # fmt: skip
    with pytest.raises(engine_meta.EngineMismatchError) as info:
        TrtSession(path).open()
    message = str(info.value)
    assert "built with TensorRT-RTX 1.7.1.116, this process runs TensorRT 10.3.0" in message
    assert "--tensorrt tensorrt-rtx" in message


def test_sidecar_picks_the_tensorrt_module(fake, tmp_path, monkeypatch):
    _, trt = fake
    asked = []
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda module=None: asked.append(module)
                        or trt)  # fmt: skip
    path = _engine(tmp_path)
    engine_meta.write_meta(path, _meta(path))
    TrtSession(path).open().close()
    TrtSession(path, sidecar="off").open().close()
    assert asked == ["tensorrt", None]
