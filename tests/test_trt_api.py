"""Every TensorRT call in our code, and every test double, against the real Python bindings.

The real TensorRT 10.16 and 11.4 bindings (PyPI wheels, installed at test time into cached
folders, imported over a gcc-built stand-in for libnvinfer) and the real TensorRT-RTX 1.7 module
are introspected (tests/trt_api/). The uses are found by parsing our source (ast, with types
followed through assignments, attributes and calls: tests/trt_api/analyze.py), not from a list,
and each must exist in each TensorRT it can run on, as the same kind, with arguments that fit a
pybind overload.
"""

from __future__ import annotations

import inspect
import subprocess
from pathlib import Path

import pytest

from . import trt_fakes as fakes
from .trt_api import analyze, bindings

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("runtime", "export", "bench", "stn_deploy", "plugins", "models")
TARGETS = ("10", "11", "rtx")
LABELS = {"10": "TensorRT 10.16", "11": "TensorRT 11.4", "rtx": "TensorRT-RTX 1.7"}


@pytest.fixture(scope="session")
def api_cache(request) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("trt-bindings"))
    import tempfile

    return Path(tempfile.mkdtemp(prefix="trt-bindings-"))


@pytest.fixture(scope="session")
def real(api_cache):
    """target -> the real API dump (installs and builds what it needs once per cache)."""
    dumps: dict[str, dict] = {}

    def get(target: str) -> dict:
        if target not in dumps:
            try:
                dumps[target] = bindings.real_api(api_cache, target)
            except bindings.Unavailable as exc:
                if target == "rtx":
                    pytest.skip(str(exc))
                raise  # the 10/11 wheels come from PyPI: failing to get them is a failure
        return dumps[target]

    return get


def _sources() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))
            if "build" not in p.parts]  # fmt: skip


@pytest.fixture(scope="session")
def uses(real):
    """Uses found in our source; member types come from the real TensorRT-RTX module's
    signatures (a real library: even getters pybind cannot describe were called and typed)."""
    return analyze.analyze_files(_sources(), ROOT, real("rtx")["api"])


# -- the bindings really are the ones named ---------------------------------------------------
@pytest.mark.parametrize("target", ["10", "11"])
def test_bindings_import_over_the_stand_in(real, api_cache, target):
    data = real(target)
    assert data["version"] == bindings.BINDINGS[target].split("==")[1]
    assert data["module"] == "tensorrt_bindings"
    installed = bindings.install(api_cache, target)
    assert bindings.needed_sonames(installed) == [f"libnvinfer.so.{target}",
                                                  f"libnvinfer_plugin.so.{target}",
                                                  f"libnvonnxparser.so.{target}"]  # fmt: skip
    needed = set(bindings.undefined_entry_points(installed))
    standin = next(api_cache.glob(f"standin-{target}-*/libnvinfer.so.{target}"))
    out = subprocess.run(["nm", "-D", "--defined-only", str(standin)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert needed and needed <= exported, needed - exported
    assert {"createInferBuilder_INTERNAL", "createNvOnnxParser_INTERNAL"} <= needed
    assert len(data["api"]) > 200  # the whole module, not an import that half failed


# -- our code --------------------------------------------------------------------------------
def test_the_uses_are_found(uses):
    """The analysis is not vacuous: the calls the build and the session depend on are there."""
    found = {(u.receiver[1] if len(u.receiver) > 1 else "trt", u.attr) for u in uses}
    for expected in [("trt", "Builder"), ("trt", "OnnxParser"), ("trt", "Runtime"),
                     ("Builder", "build_serialized_network"), ("OnnxParser", "parse_from_file"),
                     ("IBuilderConfig", "add_optimization_profile"),
                     ("IOptimizationProfile", "set_shape"), ("IOptimizationProfile", "get_shape"),
                     ("IBuilderConfig", "set_compute_capability"),
                     ("Runtime", "deserialize_cuda_engine"), ("ICudaEngine", "num_io_tensors"),
                     ("ICudaEngine", "create_execution_context"),
                     ("IExecutionContext", "set_input_shape"),
                     ("IExecutionContext", "set_tensor_address"),
                     ("IExecutionContext", "execute_async_v3"), ("IProgressMonitor", "phase_start"),
                     ("trt", "nptype"), ("IPluginRegistry", "load_library")]:  # fmt: skip
        assert expected in found, expected
    files = {u.file for u in uses}
    assert {"runtime/trt.py", "export/engine.py", "export/engine_trt.py",
            "runtime/trt_module.py", "bench/trt_check.py"} <= files  # fmt: skip
    assert len(uses) >= 60


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: LABELS[t])
def test_every_tensorrt_use_exists_in(real, uses, target):
    problems = analyze.check(uses, real(target)["api"], target)
    assert problems == [], f"{LABELS[target]}:\n" + "\n".join(problems)


MISUSE = '''
def run(trt, data):
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data)
    context = engine.create_execution_context()
    for i in range(engine.num_io_tensors()):
        context.set_tensor_address(engine.get_tensor_name(i), 0)
    context.execute_async_v2([0, 0], 0)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    config.max_workspace_size = 1 << 30
    config.set_flag(trt.BuilderFlag.FP16)
    builder.build_serialized_network(config)
'''


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: LABELS[t])
def test_an_injected_misuse_fails(real, target):
    api = real(target)["api"]
    problems = analyze.check(analyze.analyze_source("snippet.py", MISUSE, api), api, target)
    text = "\n".join(problems)
    assert "snippet.py:6: ICudaEngine.num_io_tensors: is a property, not a method" in text
    assert "snippet.py:8: IExecutionContext.execute_async_v2: does not exist" in text
    assert "snippet.py:11: IBuilderConfig.max_workspace_size: does not exist" in text
    assert "snippet.py:13: Builder.build_serialized_network: no overload takes 1 positional" \
        in text
    fp16 = "snippet.py:12: BuilderFlag.FP16: does not exist"
    assert (fp16 in text) == (target != "10")  # TensorRT 11 and TensorRT-RTX have no FP16 flag
    assert len(problems) == 4 + (target != "10"), text


def test_a_version_marker_limits_a_line_to_its_versions(real):
    api = real("11")["api"]
    source = "def f(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)  # trt-api: 10\n"
    found = analyze.analyze_source("m.py", source, api)
    assert analyze.check(found, api, "11") == []
    assert analyze.check(found, real("10")["api"], "10") == []
    unmarked = analyze.analyze_source("m.py", source.split("  #")[0] + "\n", api)
    assert analyze.check(unmarked, api, "11") == ["m.py:2: BuilderFlag.FP16: does not exist"]


# -- the test doubles -------------------------------------------------------------------------
def _fake_classes() -> list[type]:
    from .export import test_engine
    from .runtime import test_trt_session, test_trt_session_gpu

    classes = [fakes.Dims, fakes.HostMemory]
    for module in (test_engine, test_trt_session, test_trt_session_gpu):
        classes += [c for c in vars(module).values() if inspect.isclass(c) and hasattr(c, "REAL")]
    return classes


def _fake_problems(cls: type, api: dict, target: str) -> list[str]:
    real = api.get(cls.REAL)
    if real is None or real["kind"] != "class":
        return [f"{cls.__name__}: stands for {cls.REAL}, which does not exist"]
    problems = []
    skip = {"REAL", "TEST_ONLY", "TRT_TYPES", "RTX_ONLY", *getattr(cls, "TEST_ONLY", ())}
    if target != "rtx":
        skip |= set(getattr(cls, "RTX_ONLY", ()))
    for name, value in vars(cls).items():
        if name.startswith("_") or name in skip:
            continue
        member = real["members"].get(name)
        where = f"{cls.__name__}.{name} (as {cls.REAL}.{name})"
        if member is None:
            problems.append(f"{where}: not in the real class")
        elif inspect.isfunction(value):
            if member["kind"] != "method":
                problems.append(f"{where}: a method in the fake, a {member['kind']} for real")
            elif not _fits(value, member["signatures"]):
                problems.append(f"{where}: takes other arguments than {member['signatures']}")
        elif member["kind"] == "method":
            problems.append(f"{where}: an attribute in the fake, a method for real")
    return problems


def _fits(fake, signatures: list[str]) -> bool:
    """The fake accepts the arguments of at least one real overload, by position and name."""
    params = list(inspect.signature(fake).parameters.values())[1:]  # self
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for line in signatures:
        sig = analyze.parse_signature(line)
        if sig.varargs:
            return True
        same_names = names == list(sig.params[:len(names)])
        extra_optional = all(p.default is not p.empty for p in params[len(sig.params):])
        if same_names and len(names) >= sig.required and extra_optional:
            return True
    return False


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: LABELS[t])
def test_fake_classes_match_the_real_ones(real, target):
    api = real(target)["api"]
    classes = _fake_classes()
    assert len(classes) >= 15
    problems = [p for cls in classes for p in _fake_problems(cls, api, target)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: LABELS[t])
def test_fake_enums_have_the_real_values(real, target):
    api = real(target)["api"]
    enums = [fakes.DataType, fakes.TensorIOMode, fakes.MemoryPoolType,
             fakes.network_flag(target)]  # fmt: skip
    if target == "rtx":
        enums.append(fakes.compute_capability())
    for enum in enums:
        members = api[enum.__name__]["members"]
        assert {m.name: int(m) for m in enum} == {m.name: members[m.name] for m in enum}
    if target != "rtx":
        assert "ComputeCapability" not in api
    # The builder flags the fake offers exist for real, and only those (FP16: 10.x only).
    flags = {m.name for m in fakes.builder_flag(target)}
    assert flags <= set(api["BuilderFlag"]["members"])
    assert ("FP16" in api["BuilderFlag"]["members"]) == (target == "10")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: LABELS[t])
def test_fake_nptype_answers_as_the_real_one(real, target):
    table = real(target)["api"]["nptype"]["table"]
    assert table["BF16"] == table["FP8"] == table["INT4"] == table["FP4"] == "TypeError"
    for member in fakes.DataType:
        try:
            got = __import__("numpy").dtype(fakes.nptype(member)).name
        except TypeError:
            got = "TypeError"
        assert got == table[member.name], member
