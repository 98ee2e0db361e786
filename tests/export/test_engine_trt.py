"""TensorRT end to end on a GPU: build both flavours in fp32/fp16, parity with PyTorch, plugin vs
built-in layer, sidecar and plugin errors, concurrency. Marked ``tensorrt``: these skip with the
reason on machines without tensorrt or a GPU (this repository's CI); run them with
``python bench/trt_check.py`` or ``pytest -m tensorrt`` on a GPU machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from stn_deploy.runtime import engine_meta

pytestmark = pytest.mark.tensorrt

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "checkpoints" / "tutorial-R"
FP32_MAX_ABS = 1e-4
FP16_MIN_TOP1 = 0.995


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt")


@pytest.fixture(scope="module")
def checkpoint():
    if not (CHECKPOINT / "config.json").is_file():
        pytest.skip(f"checkpoint {CHECKPOINT} is not there; train it with stn-deploy train")
    from stn_deploy.export.loading import load_checkpoint

    return load_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def test_data(checkpoint):
    from stn_deploy.export.verify import load_test_split

    if not (checkpoint.dataset and checkpoint.distortion):
        pytest.skip("the checkpoint names no dataset/distortion for its test split")
    return load_test_split(checkpoint.dataset, checkpoint.distortion)


@pytest.fixture(scope="module")
def plugin_lib():
    path, tried = engine_meta.locate_plugin_library()
    if path is None:
        pytest.skip("plugin library not built (run `stn-deploy plugins build`); tried: "
                    + ", ".join(tried))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def onnx_file(workdir, checkpoint):
    """flavour, precision -> exported ONNX path (exported once per module)."""
    from stn_deploy.export.errors import ExportError
    from stn_deploy.export.onnx_export import export_checkpoint

    cache: dict[tuple[str, str], Path] = {}

    def get(flavour: str, precision: str) -> Path:
        if (flavour, precision) not in cache:
            out = workdir / f"tutorial-R-{flavour}-{precision}.onnx"
            try:
                export_checkpoint(CHECKPOINT, out, flavour=flavour, precision=precision)
            except ExportError as exc:
                pytest.skip(f"cannot export the {flavour}/{precision} flavour here: {exc}")
            cache[flavour, precision] = out
        return cache[flavour, precision]

    return get


@pytest.fixture(scope="module")
def engine_file(workdir, onnx_file, request):
    """(flavour, precision, source ONNX precision) -> built engine path (built once)."""
    from stn_deploy.export.engine import build_engine

    cache: dict[tuple, Path] = {}

    def get(flavour: str, precision: str, onnx_precision: str | None = None, **opts) -> Path:
        key = (flavour, precision, onnx_precision or precision, tuple(sorted(opts.items())))
        if key not in cache:
            plugin = request.getfixturevalue("plugin_lib") if flavour == "plugin" else None
            src = onnx_file(flavour, onnx_precision or precision)
            out = workdir / f"{src.stem}-as-{precision}-{len(cache)}.engine"
            build_engine(src, out, precision=precision, plugin_lib=plugin, **opts)
            cache[key] = out
        return cache[key]

    return get


def _trt_major() -> int:
    import tensorrt

    return engine_meta.version_tuple(tensorrt.__version__)[0]


def _verify(checkpoint, engine: Path, data, tolerance):
    from stn_deploy.export.verify import verify

    x, y = data
    return verify(checkpoint.model, engine, x, y, backend="trt", tolerance=tolerance,
                  locate=False)  # fmt: skip


@pytest.mark.parametrize("flavour", ["standard", "plugin"])
def test_fp32_engine_matches_pytorch(flavour, checkpoint, test_data, engine_file):
    from stn_deploy.export.tolerances import FP32

    engine = engine_file(flavour, "fp32")
    meta = engine_meta.read_meta(engine)
    assert (meta.flavour, meta.precision) == (flavour, "fp32")
    result = _verify(checkpoint, engine, test_data, FP32)
    assert result.max_abs_err < FP32_MAX_ABS, result.summary()
    assert result.top1_agreement == 1.0, result.summary()


@pytest.mark.parametrize("flavour", ["standard", "plugin"])
def test_fp16_engine_from_fp16_onnx_agrees_on_top1(flavour, checkpoint, test_data, engine_file):
    from stn_deploy.export.tolerances import FP16

    engine = engine_file(flavour, "fp16")
    result = _verify(checkpoint, engine, test_data, FP16)
    assert result.top1_agreement >= FP16_MIN_TOP1, result.summary()
    assert result.accuracy_backend >= result.accuracy_torch - 0.005, result.summary()


@pytest.mark.parametrize("flavour", ["standard", "plugin"])
def test_fp16_from_fp32_onnx_per_tensorrt_version(flavour, checkpoint, test_data, engine_file):
    from stn_deploy.export.engine import EngineBuildError
    from stn_deploy.export.tolerances import FP16

    if _trt_major() >= 11:
        with pytest.raises(EngineBuildError, match="--precision fp16"):
            engine_file(flavour, "fp16", onnx_precision="fp32")
        return
    engine = engine_file(flavour, "fp16", onnx_precision="fp32")  # the FP16 builder flag
    assert engine_meta.read_meta(engine).precision == "fp16"
    result = _verify(checkpoint, engine, test_data, FP16)
    assert result.top1_agreement >= FP16_MIN_TOP1, result.summary()


def test_plugin_engine_matches_builtin_layer_engine(engine_file, test_data):
    from stn_deploy.runtime import open_session

    x = test_data[0][:512]
    outs = {}
    for flavour in ("standard", "plugin"):
        with open_session(engine_file(flavour, "fp32"), "trt") as sess:
            outs[flavour] = sess.infer({"input": x})["logits"]
    assert np.abs(outs["plugin"] - outs["standard"]).max() < FP32_MAX_ABS
    assert (outs["plugin"].argmax(1) == outs["standard"].argmax(1)).all()


def test_requests_beyond_max_batch_are_split(engine_file, test_data):
    from stn_deploy.runtime import open_session

    small = engine_file("standard", "fp32", max_batch=16, opt_batch=8)
    full = engine_file("standard", "fp32")
    x = test_data[0][:50]
    with open_session(small, "trt") as a, open_session(full, "trt") as b:
        assert a.max_batch == 16
        np.testing.assert_allclose(a.infer({"input": x})["logits"],
                                   b.infer({"input": x})["logits"], atol=FP32_MAX_ABS)  # fmt: skip


def test_cuda_graphs_give_the_same_answers(engine_file, test_data):
    from stn_deploy.runtime.trt import TrtSession

    engine = engine_file("standard", "fp32")
    x = test_data[0][:33]
    with TrtSession(engine, cuda_graphs=False) as eager, TrtSession(engine) as graphs:
        want = eager.infer({"input": x})["logits"]
        for _ in range(3):  # first run eager + capture, then replays
            np.testing.assert_allclose(graphs.infer({"input": x})["logits"], want, atol=1e-6)


def test_concurrent_threads_get_their_own_answers(engine_file, test_data):
    from stn_deploy.runtime.trt import TrtSession

    x_all = test_data[0][:256]
    engine = engine_file("plugin" if engine_meta.locate_plugin_library()[0] else "standard",
                         "fp32")  # fmt: skip
    with TrtSession(engine, cuda_graphs=False) as ref_sess:
        reference = ref_sess.infer({"input": x_all})["logits"]
    errors: list[BaseException] = []
    with TrtSession(engine, contexts=4) as sess:

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(25):
                    idx = rng.choice(len(x_all), size=int(rng.integers(1, 40)), replace=False)
                    got = sess.infer({"input": x_all[idx]})["logits"]
                    np.testing.assert_allclose(got, reference[idx], atol=FP32_MAX_ABS)
            except BaseException as exc:  # collected and asserted on below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("tensorrt_version", "9.0.0", "built with TensorRT 9.0.0"),
        ("compute_capability", "1.0", "(compute capability 1.0)"),
        ("gpu_name", "Imaginary GPU", "built on 'Imaginary GPU'"),
    ],
)
def test_sidecar_mismatch_is_refused_with_rebuild_command(engine_file, workdir, field, value,
                                                           fragment):  # fmt: skip
    from stn_deploy.runtime.trt import TrtSession

    src = engine_file("standard", "fp32")
    copy = workdir / f"mismatch-{field}.engine"
    shutil.copy(src, copy)
    data = json.loads(engine_meta.sidecar_path(src).read_text())
    data[field] = value
    engine_meta.sidecar_path(copy).write_text(json.dumps(data))
    with pytest.raises(engine_meta.EngineMismatchError) as info:
        TrtSession(copy).open()
    assert fragment in str(info.value)
    assert f"stn-deploy build {data['onnx_path']} --out {copy}" in str(info.value)


def test_plugin_engine_without_library_is_refused(engine_file, workdir, monkeypatch):
    from stn_deploy.runtime.trt import TrtSession

    engine = engine_file("plugin", "fp32")
    monkeypatch.setenv(engine_meta.PLUGIN_ENV, str(workdir / "gone.so"))
    with pytest.raises(engine_meta.PluginLibraryError) as info:
        TrtSession(engine).open()
    assert f"{workdir / 'gone.so'} (${engine_meta.PLUGIN_ENV})" in str(info.value)
    assert "stn-deploy plugins build" in str(info.value)


def test_version_compatible_plugin_engine_embeds_the_library(engine_file, workdir):
    """In a fresh process with no plugin library anywhere, the embedded copy must serve."""
    engine = engine_file("plugin", "fp32", version_compatible=True)
    meta = engine_meta.read_meta(engine)
    assert meta.plugin_embedded and meta.version_compatible
    code = (
        "import sys, numpy as np; from stn_deploy.runtime import open_session; "
        "s = open_session(sys.argv[1], 'trt'); "
        "x = np.random.default_rng(0).random((8, *s.inputs[0].shape[1:]), dtype=np.float32); "
        "out = s.infer({'input': x})['logits']; print(out.shape[0], bool(np.isfinite(out).all()))"
    )
    env = {**os.environ, engine_meta.PLUGIN_ENV: str(workdir / "nowhere.so")}
    done = subprocess.run([sys.executable, "-c", code, str(engine)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "True"]
