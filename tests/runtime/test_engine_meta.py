"""The engine sidecar: round trip, the checks against the running TensorRT/GPU, plugin lookup."""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest

from stn_deploy.runtime.engine_meta import (
    PLUGIN_ENV,
    BatchProfile,
    EngineMeta,
    EngineMismatchError,
    RunningEnv,
    SidecarError,
    check_meta,
    locate_plugin_library,
    missing_plugin_message,
    read_meta,
    rebuild_command,
    sha256_file,
    sidecar_path,
    version_tuple,
    write_meta,
)

HERE = RunningEnv("10.3.0", "NVIDIA L4", "8.9")


def _meta(**changes) -> EngineMeta:
    base = dict(
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        onnx_path="out/tutorial-R.onnx",
        onnx_sha256="ab" * 32,
        precision="fp32",
        flavour="standard",
        input_name="input",
        input_shape=(1, 28, 28),
        batch=BatchProfile(1, 16, 64),
    )
    base.update(changes)
    return EngineMeta(**base)


# -- BatchProfile ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lo", "opt", "hi", "message"),
    [
        (0, 1, 1, "min must be an integer >= 1, got 0"),
        (1, 1, -3, "max must be an integer >= 1, got -3"),
        (4, 2, 8, "min <= opt <= max, got min=4 opt=2 max=8"),
        (1, 9, 8, "min <= opt <= max, got min=1 opt=9 max=8"),
        (1, 2.5, 8, "opt must be an integer >= 1, got 2.5"),
        (True, 2, 8, "min must be an integer"),
    ],
)
def test_batch_profile_rejects_bad_values_with_an_example(lo, opt, hi, message):
    with pytest.raises(ValueError, match=message) as info:
        BatchProfile(lo, opt, hi)
    assert "--max-batch" in str(info.value)


def test_batch_profile_shapes_put_batch_first():
    assert BatchProfile(2, 8, 32).shapes((3, 60, 60)) == (
        (2, 3, 60, 60),
        (8, 3, 60, 60),
        (32, 3, 60, 60),
    )


# -- read / write ------------------------------------------------------------------------------
def test_sidecar_round_trips_every_field(tmp_path):
    engine = tmp_path / "m.engine"
    meta = _meta(
        flavour="plugin",
        plugin_lib="/x/libstn_gridsample_plugin.so",
        plugin_sha256="cd" * 32,
        version_compatible=True,
        plugin_embedded=True,
        workspace_mib=512,
        timing_cache="cache.bin",
        engine_sha256="ef" * 32,
        build_seconds=12.5,
        built_at="2026-11-22T06:00:00+00:00",
        stn_deploy_version="0.1.0",
    )
    path = write_meta(engine, meta)
    assert path == tmp_path / "m.engine.json" == sidecar_path(engine)
    assert read_meta(engine) == meta
    data = json.loads(path.read_text())
    assert data["profiles"] == [
        {"input": "input", "min": [1, 1, 28, 28], "opt": [16, 1, 28, 28], "max": [64, 1, 28, 28]}
    ]
    assert data["batch"] == {"min": 1, "opt": 16, "max": 64}
    assert data["schema"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine.json"]  # no temp file left


def test_missing_sidecar_reads_as_none(tmp_path):
    assert read_meta(tmp_path / "m.engine") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a valid stn-deploy engine description"),
        ('{"schema": 7}', "schema 7 is not the one"),
        ('{"schema": 1, "precision": "fp32"}', "not a valid stn-deploy engine description"),
    ],
)
def test_unreadable_sidecar_says_rebuild(tmp_path, text, message):
    (tmp_path / "m.engine.json").write_text(text)
    with pytest.raises(SidecarError, match=message) as info:
        read_meta(tmp_path / "m.engine")
    assert "stn-deploy build" in str(info.value)


@pytest.mark.parametrize(("field", "value"), [("precision", "int8"), ("flavour", "mixed")])
def test_meta_rejects_unknown_precision_and_flavour(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        _meta(**{field: value})


# -- rebuild command ---------------------------------------------------------------------------
def test_rebuild_command_reproduces_the_build():
    meta = _meta(precision="fp16", onnx_path="my models/m.onnx")
    command = rebuild_command(meta, "out/m.engine")
    assert command == (
        "stn-deploy build 'my models/m.onnx' --out out/m.engine --precision fp16 "
        "--min-batch 1 --opt-batch 16 --max-batch 64"
    )
    assert shlex.split(command)[2] == "my models/m.onnx"


def test_rebuild_command_carries_every_option():
    meta = _meta(
        flavour="plugin",
        plugin_lib="/opt/stn/libstn_gridsample_plugin.so",
        plugin_sha256="00" * 32,
        version_compatible=True,
        workspace_mib=1024,
        timing_cache="/tmp/tc.bin",
    )
    words = shlex.split(rebuild_command(meta, "e.plan"))
    assert words[words.index("--plugin-lib") + 1] == "/opt/stn/libstn_gridsample_plugin.so"
    assert "--version-compatible" in words
    assert words[words.index("--workspace") + 1] == "1024"
    assert words[words.index("--timing-cache") + 1] == "/tmp/tc.bin"
    assert words[words.index("--out") + 1] == "e.plan"


# -- checks against the running environment ----------------------------------------------------
def test_matching_environment_passes():
    assert check_meta(_meta(), HERE, "m.engine") == []


def test_build_number_suffix_does_not_count():
    assert check_meta(_meta(tensorrt_version="10.3.0.26"), HERE, "m.engine") == []


@pytest.mark.parametrize(
    ("meta_changes", "running", "fragments"),
    [
        ({}, RunningEnv("10.4.0", "NVIDIA L4", "8.9"),
         ["built with TensorRT 10.3.0, this machine runs TensorRT 10.4.0", "tied to one"]),
        ({"version_compatible": True}, RunningEnv("10.2.0", "NVIDIA L4", "8.9"),
         ["built with TensorRT 10.3.0", "same or a newer TensorRT of the same major"]),
        ({"version_compatible": True}, RunningEnv("11.0.0", "NVIDIA L4", "8.9"),
         ["this machine runs TensorRT 11.0.0"]),
        ({}, RunningEnv("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0"),
         ["built for NVIDIA L4 (compute capability 8.9)",
          "this GPU is NVIDIA A100-SXM4-80GB (compute capability 8.0)"]),
        ({}, RunningEnv("10.3.0", "NVIDIA GeForce RTX 4090", "8.9"),
         ["built on 'NVIDIA L4', this GPU is 'NVIDIA GeForce RTX 4090'",
          "same compute capability 8.9"]),
    ],
)  # fmt: skip
def test_mismatch_names_both_sides_and_the_rebuild_command(meta_changes, running, fragments):
    meta = _meta(**meta_changes)
    with pytest.raises(EngineMismatchError) as info:
        check_meta(meta, running, "out/m.engine")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    command = rebuild_command(meta, "out/m.engine")
    assert message.endswith(f"Rebuild it on this machine with: {command}")


def test_version_compatible_engine_runs_on_newer_minor():
    meta = _meta(version_compatible=True)
    assert check_meta(meta, RunningEnv("10.7.0", "NVIDIA L4", "8.9"), "m.engine") == []


def test_two_problems_are_both_reported():
    with pytest.raises(EngineMismatchError) as info:
        check_meta(_meta(), RunningEnv("10.4.0", "H100", "9.0"), "m.engine")
    assert "TensorRT 10.4.0" in str(info.value) and "compute capability 9.0" in str(info.value)


def test_engine_file_hash_mismatch(tmp_path):
    meta = _meta(engine_sha256="11" * 32)
    assert check_meta(meta, HERE, "m.engine", engine_sha256="11" * 32) == []
    with pytest.raises(EngineMismatchError, match=r"sha256 222222222222\.\.\.\) is not the one"):
        check_meta(meta, HERE, "m.engine", engine_sha256="22" * 32)


def test_plugin_hash_mismatch_names_both_libraries_and_hashes(tmp_path):
    lib = tmp_path / "libstn_gridsample_plugin.so"
    lib.write_bytes(b"plugin v2")
    built_sha = hashlib.sha256(b"plugin v1").hexdigest()
    meta = _meta(flavour="plugin", plugin_lib="/build/libstn_gridsample_plugin.so",
                 plugin_sha256=built_sha)  # fmt: skip
    with pytest.raises(EngineMismatchError) as info:
        check_meta(meta, HERE, "m.engine", plugin_lib=lib)
    message = str(info.value)
    assert f"{lib}' has sha256 {sha256_file(lib)}" in message
    assert f"'/build/libstn_gridsample_plugin.so' of sha256 {built_sha}" in message
    lib.write_bytes(b"plugin v1")
    assert check_meta(meta, HERE, "m.engine", plugin_lib=lib) == []


def test_embedded_plugin_is_not_checked_against_a_local_library(tmp_path):
    lib = tmp_path / "libstn_gridsample_plugin.so"
    lib.write_bytes(b"something else")
    meta = _meta(flavour="plugin", plugin_sha256="00" * 32, plugin_embedded=True,
                 version_compatible=True)  # fmt: skip
    assert check_meta(meta, HERE, "m.engine", plugin_lib=lib) == []


def test_missing_sidecar_is_a_warning_in_check_mode_and_an_error_in_strict_mode():
    (warning,) = check_meta(None, HERE, "m.engine")
    assert "has no sidecar 'm.engine.json'" in warning
    with pytest.raises(SidecarError, match="has no sidecar"):
        check_meta(None, HERE, "m.engine", mode="strict")
    assert check_meta(None, HERE, "m.engine", mode="off") == []
    assert check_meta(_meta(), RunningEnv("9.0", "x", "1.0"), "m.engine", mode="off") == []
    with pytest.raises(ValueError, match="sidecar mode"):
        check_meta(None, HERE, "m.engine", mode="loose")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.3.0", (10, 3, 0)), ("10.3.0.26", (10, 3, 0)), ("11.1", (11, 1, 0)),
     ("10.14.1rc2", (10, 14, 1)), ("10", (10, 0, 0))],
)  # fmt: skip
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


# -- plugin library lookup ---------------------------------------------------------------------
def test_explicit_plugin_path_wins_and_stops_the_search(tmp_path):
    lib = tmp_path / "mine.so"
    lib.write_bytes(b"x")
    found, tried = locate_plugin_library(lib, env={}, root=tmp_path)
    assert found == lib.resolve() and tried == [f"{lib} (--plugin-lib)"]
    found, tried = locate_plugin_library(tmp_path / "absent.so", env={PLUGIN_ENV: str(lib)},
                                         root=tmp_path)  # fmt: skip
    assert found is None and tried == [f"{tmp_path / 'absent.so'} (--plugin-lib)"]


def test_environment_variable_is_next(tmp_path):
    lib = tmp_path / "env.so"
    lib.write_bytes(b"x")
    found, tried = locate_plugin_library(None, env={PLUGIN_ENV: str(lib)}, root=tmp_path)
    assert found == lib.resolve() and tried == [f"{lib} (${PLUGIN_ENV})"]


def test_default_locations_then_a_search_of_the_build_folder(tmp_path):
    found, tried = locate_plugin_library(None, env={}, root=tmp_path)
    build = tmp_path / "plugins" / "build"
    assert found is None
    assert tried == [
        str(build / "libstn_gridsample_plugin.so"),
        str(build / "libstn_plugins.so"),
        f"{build}/**/libstn*.so",
    ]
    cpu_build = build / "libstn_gridsample_cpu-1234.so"
    cpu_build.parent.mkdir(parents=True)
    cpu_build.write_bytes(b"cpu")
    assert locate_plugin_library(None, env={}, root=tmp_path)[0] is None
    nested = build / "Release" / "lib" / "libstn_gridsample_trt.so"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"x")
    found, _ = locate_plugin_library(None, env={}, root=tmp_path)
    assert found == nested.resolve()
    direct = build / "libstn_gridsample_plugin.so"
    direct.write_bytes(b"y")
    found, tried = locate_plugin_library(None, env={}, root=tmp_path)
    assert found == direct.resolve() and len(tried) == 1


def test_missing_plugin_message_lists_paths_and_the_fix():
    message = missing_plugin_message(["/a/lib.so", "/b/**/libstn*.so"], "engine 'x.engine'")
    assert message.startswith("engine 'x.engine' needs the stn GridSample plugin library")
    assert "tried: /a/lib.so, /b/**/libstn*.so." in message
    assert "`stn-deploy plugins build`" in message and f"${PLUGIN_ENV}=PATH" in message


def test_describe_engine_labels_flavour_and_precision(tmp_path):
    from stn_deploy.runtime.engine_meta import describe_engine

    write_meta(tmp_path / "a.engine", _meta())
    write_meta(tmp_path / "b.engine", _meta(flavour="plugin", precision="fp16"))
    (tmp_path / "c.engine.json").write_text("{broken")
    assert describe_engine(tmp_path / "a.engine") == "trt built-in GridSample fp32"
    assert describe_engine(tmp_path / "b.engine") == "trt plugin fp16"
    assert describe_engine(tmp_path / "c.engine") == "trt c.engine"
    assert describe_engine(tmp_path / "d.engine") == "trt d.engine"


def test_first_default_location_is_where_plugins_build_writes_the_library():
    from stn_deploy.plugins.build import DEFAULT_BUILD_DIR, PLUGIN_LIBRARY
    from stn_deploy.runtime.engine_meta import PLUGIN_LIBRARY_NAMES, default_plugin_locations

    assert PLUGIN_LIBRARY_NAMES[0] == PLUGIN_LIBRARY
    assert default_plugin_locations()[0] == DEFAULT_BUILD_DIR / PLUGIN_LIBRARY


# -- TensorRT-RTX: ahead-of-time targets, the module -------------------------------------------
RTX_HERE = RunningEnv("1.7.1.116", "NVIDIA GeForce RTX 4090", "8.9", "tensorrt_rtx")


def _aot(**changes) -> EngineMeta:
    return _meta(tensorrt_version="1.7.1.116", tensorrt_module="tensorrt_rtx", gpu_name=None,
                 compute_capability="8.6,8.9", ahead_of_time=True, **changes)  # fmt: skip


def test_ahead_of_time_engine_runs_on_any_gpu_of_its_targets():
    assert check_meta(_aot(), RTX_HERE, "m.engine") == []
    other = RunningEnv("1.7.1.116", "NVIDIA RTX A6000", "8.6", "tensorrt_rtx")
    assert check_meta(_aot(), other, "m.engine") == []


def test_ahead_of_time_engine_on_another_architecture_is_refused():
    h200 = RunningEnv("1.7.1.116", "NVIDIA H200", "9.0", "tensorrt_rtx")
    with pytest.raises(EngineMismatchError) as info:
        check_meta(_aot(), h200, "m.engine")
    message = str(info.value)
    assert "built ahead of time for compute capability 8.6,8.9, this GPU is NVIDIA H200 " \
        "(compute capability 9.0)" in message
    assert "--tensorrt tensorrt-rtx --compute-capability 8.6,8.9" in message


def test_an_rtx_engine_under_tensorrt_10_is_refused_by_module_not_version():
    with pytest.raises(EngineMismatchError) as info:
        check_meta(_aot(), HERE, "m.engine")
    assert "built with TensorRT-RTX 1.7.1.116, this process runs TensorRT 10.3.0" in \
        str(info.value)


def test_sidecar_round_trip_keeps_module_and_target(tmp_path):
    meta = _aot()
    write_meta(tmp_path / "m.engine", meta)
    assert read_meta(tmp_path / "m.engine") == meta
    with pytest.raises(ValueError, match="tensorrt_module must be one of"):
        _meta(tensorrt_module="tensorrt_lean")
