"""The CMake driver and the TensorRT plugin library, exercised without TensorRT's runtime or a GPU.

``stn-deploy plugins build`` (stn_deploy.plugins.build) builds the CPU library and kernels
always, and the plugin .so when TensorRT headers are found. A small C++ harness then loads the
plugin the way IPluginRegistry::loadLibrary does (dlopen, getCreators, setLoggerFinder) and
checks names, fields, validation, serialization round trips, formats and enqueue's error path.
Header folders: $TENSORRT_ROOT and $STN_TEST_TENSORRT_ROOTS (os.pathsep-separated).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stn_deploy.plugins import build as plugin_build
from stn_deploy.plugins import names

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH"),
]


def _header_roots() -> list[Path]:
    given = [os.environ.get("TENSORRT_ROOT", "")]
    given += os.environ.get("STN_TEST_TENSORRT_ROOTS", "").split(os.pathsep)
    roots = []
    for g in filter(None, given):
        root = Path(g).expanduser()
        include = root / "include" if (root / "include").is_dir() else root
        if (include / "NvInferRuntime.h").is_file() and root not in roots:
            roots.append(root)
    return roots


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    for c in filter(None, candidates):
        if (Path(c) / "include" / "cuda_runtime_api.h").is_file():
            return Path(c) / "include"
    return None


ROOTS = _header_roots()


def test_build_without_tensorrt_headers(tmp_path, monkeypatch):
    """No TensorRT headers: the plugin is skipped with a message; CPU library (+ kernels) built."""
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    empty = tmp_path / "no-tensorrt"
    empty.mkdir()
    has_nvcc = shutil.which("nvcc") is not None
    result = plugin_build.build(tmp_path / "b", archs="80", tensorrt_root=empty, cuda=has_nvcc,
                                jobs=2)
    assert result.cpu_library.is_file()
    assert (result.kernels_library is not None) == has_nvcc
    if result.plugin is None:  # a system-wide TensorRT install would still be found
        assert any("TensorRT headers not found" in n or "no CUDA" in n for n in result.notes)
        assert "plugin: skipped" in result.summary()


@pytest.fixture(scope="module", params=ROOTS or [None], ids=lambda r: str(r))
def plugin_library(request, tmp_path_factory):
    root = request.param
    if root is None:
        pytest.skip("no TensorRT headers: set TENSORRT_ROOT (or STN_TEST_TENSORRT_ROOTS) to a "
                    "folder with include/NvInferRuntime.h, e.g. NVIDIA/TensorRT's repository")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on the PATH: the plugin library needs the CUDA kernels")
    result = plugin_build.build(tmp_path_factory.mktemp("build"), archs="80", tensorrt_root=root,
                                jobs=2)
    assert result.plugin is not None, result.notes
    include = root / "include" if (root / "include").is_dir() else root
    assert result.tensorrt_version == plugin_build.tensorrt_version(include)
    return result, include


def _harness(plugin, include, tmp_path) -> list[list[str]]:
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("cuda_runtime_api.h not found (set CUDA_HOME)")
    exe = tmp_path / "harness"
    subprocess.run(["g++", "-std=c++17", "-Wno-deprecated-declarations", "-isystem", str(include),
                    "-isystem", str(cuda), str(HERE / "pluginHarness.cpp"), "-o", str(exe), "-ldl"],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe), str(plugin)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split(" ", 3) for line in proc.stdout.splitlines()]


def test_plugin_library_contract(plugin_library, tmp_path):
    result, include = plugin_library
    exported = subprocess.run(["nm", "-D", "--defined-only", str(result.plugin)],
                              capture_output=True, text=True).stdout
    symbols = {line.split()[-1] for line in exported.splitlines() if line.strip()}
    assert {"getCreators", "setLoggerFinder"} <= symbols
    assert not [s for s in symbols if "nvinfer" in s.lower()]
    needed = subprocess.run(["readelf", "-d", str(result.plugin)], capture_output=True,
                            text=True).stdout
    assert "libnvinfer" not in needed  # loadable without linking TensorRT

    lines = _harness(result.plugin, include, tmp_path)
    table: dict[tuple[str, ...], list[str]] = {}
    for parts in lines:
        table.setdefault(tuple(parts[:2]), []).append(" ".join(parts[2:]))
    assert table[("symbols", "1")] == ["1"]
    assert table[("count", "3")] == [""]
    creators = {p[1]: p for p in lines if p[0] == "creator"}
    assert sorted(creators) == sorted(names.OP_TYPES)
    for op_type, fields in names.FIELDS.items():
        line = " ".join(creators[op_type][1:])
        assert line == " ".join([op_type, names.PLUGIN_VERSION, names.PLUGIN_NAMESPACE, *fields])
        assert table[("roundtrip", op_type)] == ["1"]
        assert table[("clone", op_type)] == ["1"]
        serialized = table[("serialize", op_type)][0].rstrip(",").split(",")
        assert [kv.split("=")[0] for kv in serialized] == list(fields)  # symmetric with creator
        assert table[("outtype", op_type)] == ["0 1"]  # fp16 X -> fp16 Y
        formats = dict(v.split(" ") for v in table[("format", op_type)])
        assert formats == {"f32_f32_f32": "1", "f16_f16_f16": "1", "f16_f32_f16": "1",
                           "f32_f16_f32": "0", "f32_f32_f16": "0", "i32_f32_i32": "0",
                           "hwc8_f16": "1", "hwc8_f16_f32coords": "1", "hwc8_coords": "0",
                           "hwc8_f32": "0", "hwc8_to_linear": "0"}
        assert table[("configure", op_type)] == ["0 -1"]
        assert table[("enqueue_null", op_type)] == ["-1"]
        # No driver here: the launch fails and is reported, nothing crashes.
        nodevice = table[("enqueue_nodevice", op_type)][0].split(" ", 2)
        assert nodevice[:2] == ["-1", "1"] and "kernel launch failed" in nodevice[2]
        badshape = table[("enqueue_badshape", op_type)][0].split(" ", 1)
        assert badshape[0] == "-1" and "shapes do not match" in badshape[1]
        bad = table[("bad", op_type)]
        expected = 6 if op_type != names.GRID_SAMPLE_OP else 4
        assert len(bad) == expected
        for entry in bad:
            label, rejected, logged, message = entry.split(" ", 3)
            assert (rejected, logged) == ("1", "1"), entry
            assert op_type in message, entry


_AUTOLOAD_DRIVER = """
import ctypes, os, shutil, sys
fake, autoload, mode = sys.argv[1:4]
local = os.RTLD_NOW | os.RTLD_LOCAL  # what Triton's `plugins=` option does
if mode != "no-tensorrt":
    ctypes.CDLL(fake, mode=local)  # TensorRT first, loaded locally as a backend's dependency
ctypes.CDLL(autoload, mode=local)
if mode == "twice":  # a second copy: its creators are already registered
    copy = os.path.join(os.path.dirname(fake), "copy.so")
    shutil.copy(autoload, copy)
    ctypes.CDLL(copy, mode=local)
print("done", flush=True)
"""


@pytest.mark.parametrize("mode", ["once", "twice", "no-tensorrt"])
def test_autoload_library_registers_with_the_tensorrt_already_loaded(plugin_library, tmp_path,
                                                                     mode):
    result, include = plugin_library
    assert result.autoload is not None and result.autoload.is_file()
    needed = subprocess.run(["readelf", "-d", str(result.autoload)], capture_output=True,
                            text=True).stdout
    assert "[libstn_gridsample_plugin.so]" in needed and "$ORIGIN" in needed
    assert "libnvinfer" not in needed  # finds the host's TensorRT, never loads its own
    cuda = _cuda_include()
    if cuda is None:
        pytest.skip("cuda_runtime_api.h not found (set CUDA_HOME)")
    soname = f"libnvinfer.so.{result.tensorrt_version.split('.')[0]}"
    fake = tmp_path / soname
    subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wno-deprecated-declarations",
                    "-isystem", str(include), "-isystem", str(cuda), f"-Wl,-soname,{soname}",
                    str(HERE / "fakeNvinfer.cpp"), "-o", str(fake)],
                   check=True, capture_output=True, text=True)
    proc = subprocess.run([sys.executable, "-c", _AUTOLOAD_DRIVER, str(fake), str(result.autoload),
                           mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "done"
    ops = ", ".join(names.OP_TYPES)
    registered = [f"register {op} {names.PLUGIN_VERSION} {names.PLUGIN_NAMESPACE} ok"
                  for op in names.OP_TYPES]
    info = (f"log 3 stn autoload: registered {ops} (namespace {names.PLUGIN_NAMESPACE}, "
            f"version {names.PLUGIN_VERSION})")
    if mode == "once":
        assert lines == [*registered, info, "done"]
    elif mode == "twice":
        refused = [line.replace(" ok", " refused") for line in registered]
        assert lines[:4] == [*registered, info]
        assert lines[4:7] == refused
        assert lines[7].startswith(f"log 2 stn autoload: the registry refused {ops} (already")
    else:
        assert lines == ["done"]
        assert "TensorRT (libnvinfer) is not loaded in this process" in proc.stderr
