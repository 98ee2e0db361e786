"""The Triton repository parses as Triton's own ModelConfig protobuf, as tritonclient ships it."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from stn_deploy.cli import main
from stn_deploy.runtime.serving.triton_repo import TritonRepoConfig, onnx_specs, write_triton_repo
from stn_deploy.runtime.session import SessionError, TensorSpec


def _parse(path, pb2):
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def test_onnxruntime_repo_via_cli(toy_onnx, tmp_path, capsys, model_config_pb2):
    out = tmp_path / "repo"
    rc = main(["triton-repo", str(toy_onnx), "--out", str(out), "--max-batch", "32",
               "--max-delay-us", "1500", "--instances", "2"])  # fmt: skip
    assert rc == 0
    model_dir = out / "toy-stn"
    assert (model_dir / "1" / "model.onnx").read_bytes() == toy_onnx.read_bytes()
    pb2 = model_config_pb2
    cfg = _parse(model_dir / "config.pbtxt", pb2)
    assert cfg.name == "toy-stn"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 32
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("input", pb2.TYPE_FP32, [1, 8, 8])
    ]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [
        ("logits", [10]), ("theta", [2, 3]), ("warped", [1, 8, 8])
    ]  # fmt: skip
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert str(model_dir / "config.pbtxt") in capsys.readouterr().out


def test_tensorrt_repo_ships_plugin_and_autoload_with_backend_config(
    toy_onnx, tmp_path, model_config_pb2
):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"serialized engine bytes")
    plugin = tmp_path / "libstn_plugins.so"
    plugin.write_bytes(b"\x7fELF fake")
    cfg = TritonRepoConfig(name="tutorial-R", backend="tensorrt", max_batch=64)
    kwargs = dict(onnx_path=toy_onnx, engine_path=engine, plugin_lib=plugin)
    with pytest.raises(SessionError, match="libstn_plugins_autoload.so does not exist; Triton"):
        write_triton_repo(tmp_path / "repo", cfg, **kwargs)
    (tmp_path / "libstn_plugins_autoload.so").write_bytes(b"\x7fELF autoload")
    written = write_triton_repo(tmp_path / "repo", cfg, **kwargs)
    model_dir = tmp_path / "repo" / "tutorial-R"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"serialized engine bytes"
    assert (model_dir / "plugins" / "libstn_plugins.so").read_bytes() == b"\x7fELF fake"
    autoload = model_dir / "plugins" / "libstn_plugins_autoload.so"
    assert autoload.read_bytes() == b"\x7fELF autoload"
    pb2 = model_config_pb2
    parsed = _parse(model_dir / "config.pbtxt", pb2)
    assert parsed.platform == "tensorrt_plan"
    assert parsed.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    readme = (model_dir / "README.md").read_text()
    assert f'--backend-config=tensorrt,plugins="{autoload}"' in readme
    assert "`LD_PRELOAD` does not work" in readme
    assert set(written) >= {model_dir / "config.pbtxt", model_dir / "README.md", autoload}


def test_onnx_specs_reads_dynamic_batch(toy_onnx):
    inputs, outputs = onnx_specs(toy_onnx)
    assert inputs == (TensorSpec("input", (None, 1, 8, 8), "float32"),)
    assert [o.name for o in outputs] == ["logits", "theta", "warped"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a/b"}, "plain folder name"),
        ({"name": "m", "backend": "pytorch"}, "not one of"),
        ({"name": "m", "max_batch": 0}, "max_batch must be >= 1"),
        ({"name": "m", "instance_kind": "tpu"}, "auto, cpu or gpu"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TritonRepoConfig(**kwargs)


def test_tensorrt_without_engine_is_a_clear_error(toy_onnx, tmp_path):
    with pytest.raises(SessionError, match="needs an engine"):
        write_triton_repo(tmp_path, TritonRepoConfig("m", "tensorrt"), onnx_path=toy_onnx)
    assert main(["triton-repo", str(toy_onnx), "--out", str(tmp_path), "--backend",
                 "tensorrt"]) == 2  # fmt: skip


def test_model_config_json_names_a_dtype_triton_cannot_take():
    from stn_deploy.runtime.serving.triton_repo import model_config_json

    good = TensorSpec("input", (None, 3), "float16")
    config = model_config_json("m", "onnxruntime_onnx", 8, 0, [good], [good])
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP16", "dims": [3]}]
    with pytest.raises(SessionError, match="'z' has dtype complex64"):
        model_config_json(
            "m", "onnxruntime_onnx", 8, 0, [good], [TensorSpec("z", (None,), "complex64")]
        )
