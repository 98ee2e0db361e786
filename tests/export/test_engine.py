"""Engine building on the CPU: profile defaults, precision plans, ONNX inspection, parser-error
text, the `stn-deploy build` command line, and the build sequence against a fake tensorrt."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from stn_deploy.export import engine as engine_mod
from stn_deploy.export.engine import (
    EngineBuildError,
    build_engine,
    format_parser_errors,
    inspect_onnx,
    plan_precision,
    resolve_batch_profile,
)
from stn_deploy.export.engine_commands import build_options, register
from stn_deploy.export.engine_demo import demo_trt_step, trt_available
from stn_deploy.runtime import cuda_util, engine_meta
from stn_deploy.runtime.cuda_util import DeviceInfo
from stn_deploy.runtime.engine_meta import BatchProfile

from .. import trt_fakes as fakes


def _onnx(path, *, dtype=TensorProto.FLOAT, plugin=False, dims=("N", 1, 28, 28),
          metadata=None, inputs=1):  # fmt: skip
    names = ["input"] + [f"extra{i}" for i in range(1, inputs)]
    graph_inputs = [helper.make_tensor_value_info(n, dtype, list(dims)) for n in names]
    if plugin:
        attrs = {"plugin_namespace": "stn", "plugin_version": "1"}
        node = helper.make_node("STNAffineGridSample", ["input", "theta"], ["logits"],
                                domain="stn", **attrs)  # fmt: skip
        inits = [helper.make_tensor("theta", dtype, [1, 2, 3], [1, 0, 0, 0, 1, 0])]
    else:
        node = helper.make_node("Identity", ["input"], ["logits"])
        inits = []
    outputs = [helper.make_tensor_value_info("logits", dtype, None)]
    graph = helper.make_graph([node], "g", graph_inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("stn", 1)] if plugin else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


# -- profile arithmetic ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ((None, None, None), (1, 32, 256)),
        ((None, None, 8), (1, 8, 8)),
        ((300, None, None), (300, 300, 300)),
        ((None, 512, None), (1, 512, 512)),
        ((4, None, 16), (4, 16, 16)),
        ((2, None, 64), (2, 32, 64)),
        ((1, 1, 1), (1, 1, 1)),
        ((None, 64, 128), (1, 64, 128)),
    ],
)
def test_profile_defaults_follow_what_the_user_set(given, expected):
    profile = resolve_batch_profile(*given)
    assert (profile.min, profile.opt, profile.max) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ((8, 4, 16), "min=8 opt=4 max=16"),
        ((None, 64, 32), "min=1 opt=64 max=32"),
        ((0, None, None), "min must be an integer >= 1, got 0"),
        ((16, None, 8), "min=16 opt=8 max=8"),
    ],
)
def test_contradicting_profiles_are_refused(given, message):
    with pytest.raises(EngineBuildError, match=message):
        resolve_batch_profile(*given)


# -- precision planning ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "onnx_precision", "major", "expected"),
    [
        (None, "fp32", 10, ("fp32", False, False)),
        ("fp32", "fp32", 10, ("fp32", False, False)),
        ("fp16", "fp32", 10, ("fp16", False, True)),
        (None, "fp16", 10, ("fp16", True, False)),
        ("fp16", "fp16", 10, ("fp16", True, False)),
        (None, "fp32", 11, ("fp32", True, False)),
        (None, "fp16", 11, ("fp16", True, False)),
        ("fp16", "fp16", 12, ("fp16", True, False)),
    ],
)
def test_precision_plan(requested, onnx_precision, major, expected):
    plan = plan_precision(requested, onnx_precision, major)
    assert (plan.precision, plan.strongly_typed, plan.fp16_flag) == expected


def test_tensorrt_11_refuses_fp16_from_an_fp32_graph_with_the_export_command():
    with pytest.raises(EngineBuildError) as info:
        plan_precision("fp16", "fp32", 11, "out/m.onnx")
    message = str(info.value)
    assert "TensorRT 11 builds only strongly typed networks" in message
    assert "out/m.onnx is fp32" in message
    assert "stn-deploy export CKPT_DIR --out model-fp16.onnx --precision fp16" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fp32", "fp16", 10), "fp16 graph and cannot make an fp32 engine"),
        (("int8", "fp32", 10), "precision must be fp32 or fp16"),
        ((None, "fp32", 8), "TensorRT 8.x is too old"),
    ],
)
def test_precision_refusals(args, message):
    with pytest.raises(EngineBuildError, match=message):
        plan_precision(*args)


# -- ONNX inspection ---------------------------------------------------------------------------
def test_inspect_standard_fp32(tmp_path):
    info = inspect_onnx(_onnx(tmp_path / "m.onnx"))
    assert info == engine_mod.OnnxInfo("input", (1, 28, 28), True, "fp32", "standard", ())


def test_inspect_plugin_fp16(tmp_path):
    info = inspect_onnx(_onnx(tmp_path / "m.onnx", dtype=TensorProto.FLOAT16, plugin=True,
                              dims=("batch", 3, 60, 60)))  # fmt: skip
    assert (info.flavour, info.precision, info.input_shape) == ("plugin", "fp16", (3, 60, 60))
    assert info.plugin_ops == ("STNAffineGridSample",)


def test_exporter_metadata_wins_over_guessing(tmp_path):
    path = _onnx(tmp_path / "m.onnx", metadata={"stn_deploy.precision": "fp16"})
    assert inspect_onnx(path).precision == "fp16"


def test_fixed_batch_is_reported(tmp_path):
    assert inspect_onnx(_onnx(tmp_path / "m.onnx", dims=(4, 1, 28, 28))).batch_dynamic is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dims": ("N", 1, "H", 28)}, r"shape \['\?', 1, '\?', 28\]; expected \[N, C, H, W\]"),
        ({"dims": ("N", 784)}, "expected \\[N, C, H, W\\]"),
        ({"inputs": 2}, "has 2 inputs"),
    ],
)
def test_unbuildable_inputs_are_explained(tmp_path, kwargs, message):
    with pytest.raises(EngineBuildError, match=message):
        inspect_onnx(_onnx(tmp_path / "m.onnx", **kwargs))


def test_missing_and_corrupt_onnx(tmp_path):
    with pytest.raises(EngineBuildError, match="does not exist; export one with: stn-deploy"):
        inspect_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe not protobuf")
    with pytest.raises(EngineBuildError, match="is not an ONNX model"):
        inspect_onnx(bad)


# -- parser errors -----------------------------------------------------------------------------
class _ParserError:
    REAL = "ParserError"
    TEST_ONLY = ("values",)

    def __init__(self, node, name, op, code, desc):
        self.values = (node, name, op, code, desc)

    def node(self):
        return self.values[0]

    def node_name(self):
        return self.values[1]

    def node_operator(self):
        return self.values[2]

    def code(self):
        return self.values[3]

    def desc(self):
        return self.values[4]


def test_parser_errors_are_listed_node_by_node():
    code = types.SimpleNamespace(name="UNSUPPORTED_NODE")
    errors = [
        _ParserError(7, "/stn/GridSample", "GridSample", code, "mode 'linear' unsupported"),
        _ParserError(-1, "", "", "ErrorCode.INVALID_GRAPH", "graph has no outputs"),
    ]
    assert format_parser_errors(errors, "m.onnx") == (
        "TensorRT's ONNX parser rejected m.onnx (2 error(s)):\n"
        "  node 7 (name '/stn/GridSample', op GridSample): [UNSUPPORTED_NODE] "
        "mode 'linear' unsupported\n"
        "  graph: [INVALID_GRAPH] graph has no outputs"
    )


def test_parser_error_from_an_older_binding_without_names():
    old = types.SimpleNamespace(node=lambda: 3, code=lambda: 8, desc=lambda: "bad")
    assert format_parser_errors([old], "x.onnx").splitlines()[1] == "  node 3: [8] bad"


# -- without tensorrt --------------------------------------------------------------------------
def test_build_without_tensorrt_says_how_to_install(no_tensorrt, monkeypatch, tmp_path):
    with pytest.raises(EngineBuildError, match="pip install tensorrt"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_plugin_flavour_without_library_fails_before_tensorrt(no_tensorrt, monkeypatch, tmp_path):
    places = [tmp_path / "x.so"]
    monkeypatch.setattr(engine_meta, "default_plugin_locations", lambda root=None: places)
    monkeypatch.delenv(engine_meta.PLUGIN_ENV, raising=False)
    with pytest.raises(EngineBuildError) as info:
        build_engine(_onnx(tmp_path / "p.onnx", plugin=True), tmp_path / "p.engine")
    message = str(info.value)
    assert "p.onnx (plugin flavour: STNAffineGridSample) needs the stn GridSample plugin" in message
    assert f"tried: {tmp_path / 'x.so'}." in message and "stn-deploy plugins build" in message


def test_trt_available_and_demo_step_say_why_not(no_tensorrt, monkeypatch, tmp_path):
    ok, why = trt_available()
    assert ok is False and "pip install tensorrt" in why
    line = demo_trt_step({"standard": tmp_path / "m.onnx"}, tmp_path)
    assert line == f"TensorRT: skipped: {why}"


# -- command line ------------------------------------------------------------------------------
def _parse(argv):
    parser = argparse.ArgumentParser(prog="stn-deploy")
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_build_arguments_map_onto_build_engine():
    args = _parse(["build", "m.onnx", "--out", "m.engine", "--plugin-lib", "/l.so",
                   "--precision", "fp16", "--min-batch", "2", "--opt-batch", "8",
                   "--max-batch", "64", "--timing-cache", "tc.bin", "--version-compatible",
                   "--workspace", "512", "--device", "1", "--tensorrt", "tensorrt-rtx",
                   "--compute-capability", "8.6,8.9"])  # fmt: skip
    assert (args.onnx, args.out) == ("m.onnx", "m.engine")
    assert build_options(args) == {
        "plugin_lib": "/l.so", "precision": "fp16", "min_batch": 2, "opt_batch": 8,
        "max_batch": 64, "timing_cache": "tc.bin", "version_compatible": True,
        "workspace_mib": 512, "device": 1, "tensorrt": "tensorrt_rtx",
        "compute_capability": "8.6,8.9",
    }  # fmt: skip


def test_build_defaults_are_left_to_build_engine():
    opts = build_options(_parse(["build", "m.onnx", "--out", "e"]))
    assert opts == {"plugin_lib": None, "precision": None, "min_batch": None, "opt_batch": None,
                    "max_batch": None, "timing_cache": None, "version_compatible": False,
                    "workspace_mib": None, "device": 0, "tensorrt": None,
                    "compute_capability": None}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "m.onnx"], "--out"),
        (["build", "m.onnx", "--out", "e", "--max-batch", "0"], "expected a whole number >= 1"),
        (["build", "m.onnx", "--out", "e", "--min-batch", "two"], "got 'two'"),
        (["build", "m.onnx", "--out", "e", "--precision", "int8"], "invalid choice"),
    ],
)
def test_bad_build_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_prints_build_errors_without_traceback(no_tensorrt, monkeypatch, tmp_path, capsys):
    from stn_deploy.cli import main

    onnx_path = _onnx(tmp_path / "m.onnx")
    code = main(["build", str(onnx_path), "--out", str(tmp_path / "e"), "--min-batch", "9",
                 "--max-batch", "4"])  # fmt: skip
    assert code == 2
    assert "error: batch profile needs min <= opt <= max, got min=9" in capsys.readouterr().err
    assert main(["build", str(onnx_path), "--out", str(tmp_path / "e")]) == 2
    assert "pip install tensorrt" in capsys.readouterr().err


# -- the build sequence against a fake tensorrt ------------------------------------------------
class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []
        self.config = None


class _Monitor:
    REAL = "IProgressMonitor"

    def __init__(self):
        pass


class _TimingCache:
    REAL = "ITimingCache"

    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self):
        return fakes.HostMemory(b"CACHE" + self.blob)


class _Config:
    """Stands for IBuilderConfig (checked against the real one in tests/test_trt_api.py)."""

    REAL = "IBuilderConfig"
    TEST_ONLY = ("rec", "cache", "refuse_profile", "no_cache")
    RTX_ONLY = ("num_compute_capabilities", "set_compute_capability")
    plugins_to_serialize: list[str] = []
    progress_monitor = None
    num_compute_capabilities = 0
    num_optimization_profiles = 0

    def __init__(self, rec: _Recorder, refuse_profile=False, no_cache=False):
        self.rec, self.cache = rec, None
        self.refuse_profile, self.no_cache = refuse_profile, no_cache
        self.plugins_to_serialize = []
        self.progress_monitor = None
        self.num_compute_capabilities = 0
        self.num_optimization_profiles = 0

    def set_flag(self, flag):
        self.rec.calls.append(("set_flag", flag.name))

    def clear_flag(self, flag):
        self.rec.calls.append(("clear_flag", flag.name))

    def set_memory_pool_limit(self, pool, pool_size):
        self.rec.calls.append(("pool", pool.name, pool_size))

    def add_optimization_profile(self, profile):
        self.rec.calls.append(("profile", *profile.shapes))
        if self.refuse_profile:
            return -1
        self.num_optimization_profiles += 1
        return self.num_optimization_profiles - 1

    def set_compute_capability(self, compute_capability, index):
        self.rec.calls.append(("compute_capability", compute_capability.name, index))
        return index < self.num_compute_capabilities

    def create_timing_cache(self, serialized_timing_cache):
        return _TimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.rec.calls.append(("timing_cache", cache.blob))
        self.cache = cache
        return True

    def get_timing_cache(self):
        return None if self.no_cache else self.cache


class _Profile:
    REAL = "IOptimizationProfile"

    def set_shape(self, input, min, opt, max):  # noqa: A002 - the real parameter names
        self.shapes = (input, min, opt, max)

    def get_shape(self, input):  # noqa: A002
        return [fakes.Dims(s) for s in self.shapes[1:]]


class _Network:
    REAL = "INetworkDefinition"


class _Builder:
    REAL = "Builder"
    TEST_ONLY = ("rec", "fail_build", "config_options")

    def __init__(self, rec: _Recorder, fail_build: bool, config_options: dict):
        self.rec, self.fail_build, self.config_options = rec, fail_build, config_options

    def create_network(self, flags=0):
        self.rec.calls.append(("network_flags", flags))
        return _Network()

    def create_builder_config(self):
        self.rec.config = _Config(self.rec, **self.config_options)
        return self.rec.config

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        if config.progress_monitor is not None:
            config.progress_monitor.phase_start("Building", None, 3)
            config.progress_monitor.phase_finish("Building")
        return None if self.fail_build else fakes.HostMemory(b"ENGINE-BYTES")


class _Parser:
    REAL = "OnnxParser"
    TEST_ONLY = ("rec", "errors")
    num_errors = 0

    def __init__(self, rec: _Recorder, errors):
        self.rec, self.errors, self.num_errors = rec, list(errors), len(errors)

    def parse_from_file(self, model):
        self.rec.calls.append(("parse", model))
        return not self.errors

    def get_error(self, index):
        return self.errors[index]


class _Registry:
    REAL = "IPluginRegistry"

    def __init__(self, rec: _Recorder):
        self.rec = rec

    def load_library(self, plugin_path):
        self.rec.calls.append(("load", plugin_path))
        return object()


class _Logger:
    REAL = "Logger"
    WARNING = 2

    def __init__(self, min_severity=2):
        self.min_severity = min_severity


def _fake_build_trt(version="10.3.0", *, parse_errors=(), fail_build=False, module="tensorrt",
                    **config_options):  # fmt: skip
    """A tensorrt (or tensorrt_rtx) module of ``version`` with the real enum values."""
    rec = _Recorder()
    registry = _Registry(rec)
    target = fakes.target_of(version, module)
    trt = types.SimpleNamespace(
        __name__=module,
        __version__=version,
        Logger=_Logger,
        Builder=lambda logger: _Builder(rec, fail_build, config_options),
        OnnxParser=lambda network, logger: _Parser(rec, parse_errors),
        IProgressMonitor=_Monitor,
        NetworkDefinitionCreationFlag=fakes.network_flag(target),
        BuilderFlag=fakes.builder_flag(target),
        MemoryPoolType=fakes.MemoryPoolType,
        get_plugin_registry=lambda: registry,
    )
    if target == "rtx":
        trt.ComputeCapability = fakes.compute_capability()
    return trt, rec


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = types.SimpleNamespace(info=lambda: DeviceInfo("Fake GPU", "8.9", "12.4"),
                                set_device=lambda: None)  # fmt: skip
    monkeypatch.setattr(cuda_util, "load_cuda", lambda device=0, prefer=None: gpu)


def _build(monkeypatch, trt, tmp_path, onnx_path, **opts):
    monkeypatch.setattr(engine_mod, "_import_trt", lambda module=None: trt)
    lines: list[str] = []
    result = build_engine(onnx_path, tmp_path / "out" / "m.engine", report=lines.append, **opts)
    return result, lines


def test_fp32_build_writes_engine_and_sidecar(monkeypatch, tmp_path, fake_gpu):
    trt, rec = _fake_build_trt()
    onnx_path = _onnx(tmp_path / "m.onnx")
    result, lines = _build(monkeypatch, trt, tmp_path, onnx_path, max_batch=64)
    assert result.engine_path.read_bytes() == b"ENGINE-BYTES"
    assert ("network_flags", 0) in rec.calls
    assert ("clear_flag", "TF32") in rec.calls and ("set_flag", "FP16") not in rec.calls
    assert ("profile", "input", (1, 1, 28, 28), (32, 1, 28, 28), (64, 1, 28, 28)) in rec.calls
    assert ("parse", str(onnx_path)) in rec.calls
    meta = engine_meta.read_meta(result.engine_path)
    assert meta == result.meta
    assert (meta.flavour, meta.precision) == ("standard", "fp32")
    assert meta.batch == BatchProfile(1, 32, 64)
    assert (meta.gpu_name, meta.compute_capability) == ("Fake GPU", "8.9")
    assert meta.tensorrt_version == "10.3.0"
    assert meta.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert meta.engine_sha256 == hashlib.sha256(b"ENGINE-BYTES").hexdigest()
    assert meta.plugin_lib is None and meta.plugin_sha256 is None
    assert "  Building (3 steps)" in lines and lines[-1].startswith("built ")
    assert sorted(p.name for p in result.engine_path.parent.iterdir()) == ["m.engine",
                                                                           "m.engine.json"]


def test_fp16_from_fp32_graph_on_tensorrt_10_uses_the_builder_flag(monkeypatch, tmp_path, fake_gpu):
    trt, rec = _fake_build_trt("10.9.0")
    result, _ = _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), precision="fp16")
    assert ("set_flag", "FP16") in rec.calls and ("network_flags", 0) in rec.calls
    assert ("clear_flag", "TF32") not in rec.calls
    assert result.meta.precision == "fp16"


@pytest.mark.parametrize(("version", "module", "flags"), [
    ("10.3.0", "tensorrt", 2),  # STRONGLY_TYPED is bit 1 on 10.x
    ("11.0.0", "tensorrt", 1),  # and bit 0 on 11.x and TensorRT-RTX
    ("1.7.1.116", "tensorrt_rtx", 1),
])
def test_fp16_graph_builds_strongly_typed(monkeypatch, tmp_path, fake_gpu, version, module, flags):
    trt, rec = _fake_build_trt(version, module=module)
    onnx_path = _onnx(tmp_path / "m.onnx", dtype=TensorProto.FLOAT16)
    result, _ = _build(monkeypatch, trt, tmp_path, onnx_path)
    assert ("network_flags", flags) in rec.calls and ("set_flag", "FP16") not in rec.calls
    assert result.meta.precision == "fp16"


def test_plugin_build_loads_embeds_and_records_the_library(monkeypatch, tmp_path, fake_gpu):
    trt, rec = _fake_build_trt()
    lib = tmp_path / "libstn_gridsample_plugin.so"
    lib.write_bytes(b"plugin")
    onnx_path = _onnx(tmp_path / "p.onnx", plugin=True)
    result, _ = _build(monkeypatch, trt, tmp_path, onnx_path, plugin_lib=lib,
                       version_compatible=True, workspace_mib=512)  # fmt: skip
    assert ("load", str(lib.resolve())) in rec.calls
    assert rec.config.plugins_to_serialize == [str(lib.resolve())]
    assert ("set_flag", "VERSION_COMPATIBLE") in rec.calls
    assert ("pool", "WORKSPACE", 512 << 20) in rec.calls
    meta = result.meta
    assert (meta.flavour, meta.plugin_embedded, meta.version_compatible) == ("plugin", True, True)
    assert meta.plugin_sha256 == hashlib.sha256(b"plugin").hexdigest()
    assert "--version-compatible --workspace 512" in engine_meta.rebuild_command(meta, "x")


def test_timing_cache_is_read_and_written_back(monkeypatch, tmp_path, fake_gpu):
    trt, rec = _fake_build_trt()
    cache = tmp_path / "tc.bin"
    _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), timing_cache=cache)
    assert ("timing_cache", b"") in rec.calls and cache.read_bytes() == b"CACHE"
    trt, rec = _fake_build_trt()
    _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), timing_cache=cache)
    assert ("timing_cache", b"CACHE") in rec.calls and cache.read_bytes() == b"CACHECACHE"


def test_parser_errors_stop_the_build(monkeypatch, tmp_path, fake_gpu):
    error = _ParserError(2, "gs", "GridSample", "UNSUPPORTED_NODE", "no importer")
    trt, _ = _fake_build_trt(parse_errors=[error])
    with pytest.raises(EngineBuildError) as info:
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"))
    assert "node 2 (name 'gs', op GridSample): [UNSUPPORTED_NODE] no importer" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_failed_build_writes_nothing(monkeypatch, tmp_path, fake_gpu):
    trt, _ = _fake_build_trt(fail_build=True)
    with pytest.raises(EngineBuildError, match="TensorRT 10.3.0 could not build"):
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"))
    assert not (tmp_path / "out").exists()


def test_sidecar_json_is_plain_data(monkeypatch, tmp_path, fake_gpu):
    trt, _ = _fake_build_trt()
    result, _ = _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"))
    data = json.loads(result.sidecar_path.read_text())
    assert data["stn_deploy_version"] == "0.1.0" and data["built_at"].endswith("+00:00")
    assert np.isclose(data["build_seconds"], result.meta.build_seconds)


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "precision"), [("standard", "fp32"), ("plugin", "fp16")])
def test_inspect_reads_what_the_exporter_writes(tmp_path, flavour, precision):
    from stn_deploy.export.onnx_export import export_module
    from stn_deploy.models.zoo import build_model

    path = tmp_path / "m.onnx"
    export_module(build_model("tutorial"), (1, 28, 28), path, flavour=flavour, precision=precision)
    info = inspect_onnx(path)
    assert (info.flavour, info.precision, info.input_shape) == (flavour, precision, (1, 28, 28))
    assert info.input_name == "input" and info.batch_dynamic
    assert info.plugin_ops == (("STNAffineGridSample",) if flavour == "plugin" else ())


# -- TensorRT-RTX, ahead of time; static batches; refused results -------------------------------
@pytest.fixture
def no_gpu(monkeypatch):
    def refuse(device=0, prefer=None):
        raise cuda_util.BackendUnavailableError("no usable CUDA binding for GPU 0")

    monkeypatch.setattr(cuda_util, "load_cuda", refuse)


def test_rtx_builds_ahead_of_time_without_a_gpu(monkeypatch, tmp_path, no_gpu):
    trt, rec = _fake_build_trt("1.7.1.116", module="tensorrt_rtx")
    result, lines = _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"),
                           compute_capability="86,sm_89")  # fmt: skip
    assert ("compute_capability", "SM86", 0) in rec.calls
    assert ("compute_capability", "SM89", 1) in rec.calls
    assert rec.config.num_compute_capabilities == 2
    assert ("network_flags", 1) in rec.calls  # strongly typed, as on TensorRT 11
    meta = engine_meta.read_meta(result.engine_path)
    assert (meta.gpu_name, meta.compute_capability, meta.ahead_of_time) == (None, "8.6,8.9", True)
    assert meta.tensorrt_module == "tensorrt_rtx"
    assert "ahead of time for compute capability 8.6,8.9 (no GPU probed)" in lines[-1]
    assert "--tensorrt tensorrt-rtx --compute-capability 8.6,8.9" in engine_meta.rebuild_command(
        meta, "m.engine")


@pytest.mark.parametrize(("given", "message"), [
    ("9.0", "cannot build for compute capability 9.0; it builds for 7.5, 8.0, 8.6, 8.9, 12.0"),
    ("eight", "bad --compute-capability 'eight'; expected e.g. 8.6"),
])
def test_rtx_target_it_cannot_build_is_refused(monkeypatch, tmp_path, no_gpu, given, message):
    trt, _ = _fake_build_trt("1.7.1.116", module="tensorrt_rtx")
    with pytest.raises(EngineBuildError, match=re.escape(message)):
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), compute_capability=given)
    assert not (tmp_path / "out").exists()


def test_rtx_without_gpu_or_target_says_to_give_one(monkeypatch, tmp_path, no_gpu):
    trt, _ = _fake_build_trt("1.7.1.116", module="tensorrt_rtx")
    with pytest.raises(EngineBuildError) as info:
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"))
    assert "TensorRT-RTX 1.7.1.116 can build without a GPU, ahead of time: add " \
        "--compute-capability" in str(info.value)
    assert "e.g. --compute-capability 8.6" in str(info.value)


def test_compute_capability_needs_tensorrt_rtx(monkeypatch, tmp_path, no_gpu):
    trt, _ = _fake_build_trt("10.16.1")
    with pytest.raises(EngineBuildError) as info:
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), compute_capability="8.6")
    assert "--compute-capability needs TensorRT-RTX (pip install 'stn-deploy[trt-rtx]'" in \
        str(info.value)
    assert "TensorRT 10.16.1 builds only for the GPU it runs on" in str(info.value)


def test_rtx_refuses_fp16_from_an_fp32_graph(monkeypatch, tmp_path, no_gpu):
    trt, _ = _fake_build_trt("1.7.1.116", module="tensorrt_rtx")
    with pytest.raises(EngineBuildError, match="TensorRT-RTX builds only strongly typed networks"):
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), precision="fp16",
               compute_capability="8.6")  # fmt: skip


def test_static_batch_gets_min_opt_max_equal(monkeypatch, tmp_path, fake_gpu):
    trt, rec = _fake_build_trt()
    onnx_path = _onnx(tmp_path / "m.onnx", dims=(4, 1, 28, 28))
    result, lines = _build(monkeypatch, trt, tmp_path, onnx_path)
    assert ("profile", "input", (4, 1, 28, 28), (4, 1, 28, 28), (4, 1, 28, 28)) in rec.calls
    assert result.meta.batch == BatchProfile(4, 4, 4)
    assert result.meta.profiles[0]["max"] == [4, 1, 28, 28]
    assert "batch 4/4/4" in lines[-1]


def test_static_batch_refuses_other_batch_sizes(monkeypatch, tmp_path, fake_gpu):
    trt, _ = _fake_build_trt()
    onnx_path = _onnx(tmp_path / "m.onnx", dims=(4, 1, 28, 28))
    with pytest.raises(EngineBuildError) as info:
        _build(monkeypatch, trt, tmp_path, onnx_path, max_batch=64)
    assert str(info.value) == (
        f"{onnx_path} has a static batch of 4 (input 'input' is [4, 1, 28, 28]), so its engine "
        "runs batch 4 only and cannot take --max-batch 64. Drop those options, or re-export "
        "with a dynamic batch: stn-deploy export CKPT_DIR --out model.onnx"
    )


def test_refused_profile_is_an_error_not_a_broken_engine(monkeypatch, tmp_path, fake_gpu):
    trt, _ = _fake_build_trt(refuse_profile=True)
    with pytest.raises(EngineBuildError) as info:
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), max_batch=8)
    assert "TensorRT rejected the optimisation profile of input 'input' (min [1, 1, 28, 28], " \
        "opt [8, 1, 28, 28], max [8, 1, 28, 28]" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_timing_cache_is_a_warning(monkeypatch, tmp_path, fake_gpu, caplog):
    trt, _ = _fake_build_trt(no_cache=True)
    cache = tmp_path / "tc.bin"
    with caplog.at_level(logging.WARNING):
        result, _ = _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"),
                           timing_cache=cache)  # fmt: skip
    assert result.engine_path.is_file() and not cache.exists()
    assert any("returned no timing cache after the build" in r.message for r in caplog.records)


def test_rtx_ignores_the_timing_cache_and_says_so(monkeypatch, tmp_path, no_gpu, caplog):
    trt, rec = _fake_build_trt("1.7.1.116", module="tensorrt_rtx")
    cache = tmp_path / "tc.bin"
    with caplog.at_level(logging.WARNING):
        _build(monkeypatch, trt, tmp_path, _onnx(tmp_path / "m.onnx"), timing_cache=cache,
               compute_capability="8.6")  # fmt: skip
    assert not any(c[0] == "timing_cache" for c in rec.calls) and not cache.exists()
    assert any("TensorRT-RTX keeps no timing cache" in r.message for r in caplog.records)
