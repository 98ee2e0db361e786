"""Our plugin library inside a real TensorRT: TensorRT-RTX's registry, bindings, parser, builder.

Needs the plugin library, so TensorRT headers ($TENSORRT_ROOT / $STN_TEST_TENSORRT_ROOTS, as in
test_trt_plugin.py) and nvcc; without them (CI) every test here skips with the reason. Each
TensorRT step runs in a child process: a plugin or parser that aborts must fail a test, not end
the test run.

TensorRT-RTX 1.7's ONNX parser dlopen()s ``libtensorrt_rtx.so`` (no version suffix; the wheel
ships only ``libtensorrt_rtx.so.1``) when it adds an IPluginV3 layer, and a failure there ends
in std::terminate (plugins/README.md has the backtrace). The children that parse get a folder
with that link on LD_LIBRARY_PATH, as `stn-deploy build`'s message tells users to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stn_deploy.plugins import build as plugin_build
from stn_deploy.plugins import names

from .test_trt_plugin import _header_roots

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is a dev dependency")

ROOT = Path(__file__).resolve().parents[2]
ROOTS = _header_roots()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH"),
]


@pytest.fixture(scope="module", params=ROOTS or [None], ids=lambda r: str(r))
def built(request, tmp_path_factory):
    root = request.param
    if root is None:
        pytest.skip("no TensorRT headers: set TENSORRT_ROOT (or STN_TEST_TENSORRT_ROOTS) to a "
                    "folder with include/NvInferRuntime.h (the tensorrt-rtx wheels ship no "
                    "headers), e.g. NVIDIA/TensorRT's repository")  # fmt: skip
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on the PATH: the plugin library needs the CUDA kernels")
    result = plugin_build.build(tmp_path_factory.mktemp("build"), archs="86", tensorrt_root=root,
                                jobs=2)  # fmt: skip
    assert result.plugin is not None, result.notes
    return result


@pytest.fixture(scope="module")
def plugin_lib(built) -> Path:
    return built.plugin


@pytest.fixture(scope="module")
def link_dir(tmp_path_factory) -> Path:
    """A folder holding libtensorrt_rtx.so -> the wheel's libtensorrt_rtx.so.1."""
    import tensorrt_rtx_libs

    real = Path(tensorrt_rtx_libs.__file__).resolve().parent / "libtensorrt_rtx.so.1"
    folder = tmp_path_factory.mktemp("rtx-link")
    (folder / "libtensorrt_rtx.so").symlink_to(real)
    return folder


@pytest.fixture(scope="module")
def plugin_onnx(tmp_path_factory):
    from stn_deploy.export.onnx_export import export_checkpoint

    folder = tmp_path_factory.mktemp("plugin-onnx")
    out = {}
    for precision in ("fp32", "fp16"):
        out[precision] = folder / f"tutorial-R-plugin-{precision}.onnx"
        export_checkpoint(ROOT / "models" / "checkpoints" / "tutorial-R", out[precision],
                          flavour="plugin", precision=precision)  # fmt: skip
    return out


def _run(code: str, *args, link: Path | None = None, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if link is not None:
        env["LD_LIBRARY_PATH"] = str(link)
    env["STN_DEPLOY_CACHE"] = env.get("STN_DEPLOY_CACHE", str(Path.home() / ".cache/stn-deploy"))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


REGISTRY = r"""
import json, sys
import numpy as np
import tensorrt_rtx as trt
logger = trt.Logger(trt.Logger.WARNING)
builder = trt.Builder(logger)  # the logger our plugin's messages go to (via setLoggerFinder)
registry = trt.get_plugin_registry()
assert registry.load_library(sys.argv[1]) is not None
out = {}
values = {"out_height": 20, "out_width": 24, "interpolation_mode": 2, "padding_mode": 1,
          "align_corners": 1}
for op in json.loads(sys.argv[2]):
    creator = registry.get_creator(op, "1", "stn")
    fields = [trt.PluginField(f.name, np.array([values[f.name]], np.int32),
                              trt.PluginFieldType.INT32) for f in creator.field_names]
    plugin = creator.create_plugin("node", trt.PluginFieldCollection(fields),
                                   trt.TensorRTPhase.BUILD)
    core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
    build = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
    bad = [trt.PluginField("interpolation_mode", np.array([7], np.int32),
                           trt.PluginFieldType.INT32)]
    rejected = creator.create_plugin("bad", trt.PluginFieldCollection(bad),
                                     trt.TensorRTPhase.BUILD)
    out[op] = {
        "creator": [creator.name, creator.plugin_version, creator.plugin_namespace],
        "fields": [[f.name, f.type.name] for f in creator.field_names],
        "plugin": [core.plugin_name, core.plugin_version, core.plugin_namespace],
        "outputs": build.num_outputs,
        "bad_fields": rejected is None,
    }
print(json.dumps(out))
"""


def test_creators_and_plugins_through_the_python_bindings(built, plugin_lib):
    done = _run(REGISTRY, plugin_lib, json.dumps(list(names.OP_TYPES)))
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(done.stdout.splitlines()[-1])
    assert sorted(table) == sorted(names.OP_TYPES)
    for op, row in table.items():
        assert row["creator"] == [op, names.PLUGIN_VERSION, names.PLUGIN_NAMESPACE]
        assert row["fields"] == [[f, "INT32"] for f in names.FIELDS[op]]
        assert row["plugin"] == [op, names.PLUGIN_VERSION, names.PLUGIN_NAMESPACE]
        assert (row["outputs"], row["bad_fields"]) == (1, True)
    # A rejected field is logged with the op and the valid values: through TensorRT-RTX's logger
    # by a library built with 11.x headers (TensorRT's Python logger writes to stdout); on
    # stderr, with a note, by one built with 10.x headers, whose ILoggerFinder/ILogger layout is
    # not TensorRT-RTX's (plugins/src/pluginHost.h).
    message = "interpolation_mode=7 is invalid; expected 0 (bilinear), 1 (nearest) or 2"
    if int(built.tensorrt_version.split(".")[0]) >= 11:
        assert f"[TRT] [E] [stn GridSample plugin] STNGridSample: attribute {message}" in \
            done.stdout
    else:
        assert f"\n[stn GridSample plugin] STNGridSample: attribute {message}" in \
            "\n" + done.stderr
        assert "built with TensorRT 10 headers, whose logger interfaces differ from the " \
            "TensorRT in this process (TensorRT 11 or TensorRT-RTX)" in done.stderr


BUILD = r"""
import json, sys
import tensorrt_rtx as trt
from stn_deploy.export.engine import build_engine
onnx_path, lib, out = sys.argv[1:4]
result = build_engine(onnx_path, out, plugin_lib=lib, compute_capability="8.6",
                      report=lambda line: None)
# The network as the parser made it: our plugin layer, its output shape and type.
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = trt.OnnxParser(network, logger)
assert parser.parse_from_file(onnx_path)
layers = []
for i in range(network.num_layers):
    layer = network.get_layer(i)
    if layer.type == trt.LayerType.PLUGIN_V3:
        layer.__class__ = trt.IPluginV3Layer
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        output = layer.get_output(0)
        layers.append([core.plugin_name, core.plugin_namespace, list(output.shape),
                       output.dtype.name, layer.get_input(0).dtype.name])
data = open(out, "rb").read()
print(json.dumps({"layers": layers, "input": network.get_input(0).dtype.name,
                  "bytes": len(data), "meta": json.loads(open(out + ".json").read()),
                  "serialized": [data.count(k.encode()) for k in sys.argv[4:]]}))
"""


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plugin_flavour_parses_and_builds(plugin_lib, plugin_onnx, link_dir, tmp_path, precision):
    engine = tmp_path / f"plugin-{precision}.engine"
    keys = [names.AFFINE_GRID_SAMPLE_OP, *names.FIELDS[names.AFFINE_GRID_SAMPLE_OP]]
    done = _run(BUILD, plugin_onnx[precision], plugin_lib, engine, *keys, link=link_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    # getOutputShapes ran with the fields the parser passed (out_height = out_width = 28);
    # sampling stays fp32 in an fp16 graph (the exporter's fp32 island, ../shared/DESIGN.md).
    assert report["layers"] == [[names.AFFINE_GRID_SAMPLE_OP, "stn", [-1, 1, 28, 28], "FLOAT",
                                 "FLOAT"]]  # fmt: skip
    assert report["input"] == ("HALF" if precision == "fp16" else "FLOAT")
    assert report["bytes"] > 10_000
    assert all(count >= 1 for count in report["serialized"]), report["serialized"]
    meta = report["meta"]
    assert (meta["flavour"], meta["precision"], meta["tensorrt_module"]) == ("plugin", precision,
                                                                            "tensorrt_rtx")
    assert meta["plugin_lib"] == str(plugin_lib.resolve())
    assert meta["plugin_sha256"] == plugin_build_sha(plugin_lib)


def plugin_build_sha(path: Path) -> str:
    from stn_deploy.runtime.engine_meta import sha256_file

    return sha256_file(path)


RAW_PARSE = r"""
import sys
import tensorrt_rtx as trt
logger = trt.Logger(trt.Logger.INFO)
assert trt.get_plugin_registry().load_library(sys.argv[2]) is not None
network = trt.Builder(logger).create_network(0)
parser = trt.OnnxParser(network, logger)
print("parsing", flush=True)
print("parsed", parser.parse_from_file(sys.argv[1]), flush=True)
"""


def test_without_the_link_the_parser_aborts_and_stn_deploy_refuses_first(plugin_lib, plugin_onnx,
                                                                         tmp_path):  # fmt: skip
    """The root cause, reproduced: the raw parser dies (SIGABRT, std::terminate) right after
    creating our plugin; `stn-deploy build` says why and exits 2 instead."""
    raw = _run(RAW_PARSE, plugin_onnx["fp32"], plugin_lib)
    if raw.returncode == 0:
        pytest.skip("libtensorrt_rtx.so is findable here: the parser does not abort")
    assert raw.returncode == -6, raw.stderr[-2000:]  # SIGABRT
    assert "parsing" in raw.stdout.splitlines() and "parsed" not in raw.stdout  # never returned
    both = raw.stdout + raw.stderr  # TensorRT's Python logger writes to stdout
    assert "Successfully created plugin: STNAffineGridSample" in both
    assert "terminate called without an active exception" in raw.stderr
    cli = _run("import sys; from stn_deploy.cli import main; sys.exit(main(sys.argv[1:]))",
               "build", plugin_onnx["fp32"], "--out", tmp_path / "e.engine", "--plugin-lib",
               plugin_lib, "--compute-capability", "8.6")  # fmt: skip
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert "aborts the whole process when that fails" in cli.stderr
    assert not (tmp_path / "e.engine").exists()
