"""Write a Triton Inference Server model repository: config.pbtxt, the model file, the plugin.

Layout (Triton ignores non-numeric folders inside a model folder, so the plugin can live there)::

    OUT/NAME/config.pbtxt
    OUT/NAME/1/model.onnx           (onnxruntime_onnx)   or   OUT/NAME/1/model.plan (tensorrt_plan)
    OUT/NAME/plugins/libstn*.so     (only with a plugin library: it and its autoload companion)
    OUT/NAME/README.md              how to start tritonserver (with --backend-config plugins=)

The same KServe v2 endpoints and tensor names as ``stn-deploy serve``, so clients do not change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stn_deploy.runtime.session import SessionError, TensorSpec

__all__ = [
    "TritonRepoConfig",
    "onnx_specs",
    "tensor_configs",
    "model_config_json",
    "config_pbtxt",
    "write_triton_repo",
]

_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}
_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}  # fmt: skip


@dataclass(frozen=True)
class TritonRepoConfig:
    """One model's Triton configuration. ``instance_kind`` 'auto': GPU for tensorrt, else CPU."""

    name: str
    backend: str = "onnxruntime"
    max_batch: int = 64
    max_queue_delay_us: int = 2000
    instances: int = 1
    instance_kind: str = "auto"

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(
                f"model name {self.name!r} must be a plain folder name, e.g. tutorial-R"
            )
        if self.backend not in _PLATFORMS:
            raise ValueError(f"backend {self.backend!r} is not one of {sorted(_PLATFORMS)}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}; e.g. 64")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.instance_kind not in ("auto", "cpu", "gpu"):
            raise ValueError(f"instance_kind {self.instance_kind!r}: use auto, cpu or gpu")

    @property
    def kind(self) -> str:
        if self.instance_kind == "auto":
            return "KIND_GPU" if self.backend == "tensorrt" else "KIND_CPU"
        return f"KIND_{self.instance_kind.upper()}"


def onnx_specs(path: str | os.PathLike) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs of an ONNX file, read from its graph (no runtime needed)."""
    import onnx
    from onnx import helper

    model = onnx.load(os.fspath(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return TensorSpec(value.name, dims, dtype)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in inits)
    return inputs, tuple(spec(v) for v in model.graph.output)


def tensor_configs(specs: Sequence[TensorSpec]) -> list[dict]:
    """Triton TensorConfig entries as JSON: the batch dimension left out, -1 where dynamic."""
    entries = []
    for s in specs:
        if s.dtype not in _TYPES:
            raise SessionError(f"tensor {s.name!r} has dtype {s.dtype}, which Triton cannot take")
        dims = [d if isinstance(d, int) else -1 for d in s.shape[1:]]
        entries.append({"name": s.name, "data_type": _TYPES[s.dtype], "dims": dims})
    return entries


def model_config_json(
    name: str,
    platform: str,
    max_batch_size: int,
    max_queue_delay_us: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict:
    """A ModelConfig in its JSON form, as Triton's model configuration extension returns it."""
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "input": tensor_configs(inputs),
        "output": tensor_configs(outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us},
    }


def _tensor_block(specs: Sequence[TensorSpec]) -> str:
    entries = [
        f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
        f"    dims: [ {', '.join(map(str, t['dims']))} ]\n  }}"
        for t in tensor_configs(specs)
    ]
    return "[\n" + ",\n".join(entries) + "\n]"


def config_pbtxt(
    config: TritonRepoConfig, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> str:
    """The text-format ModelConfig; the batch dimension is implicit (max_batch_size > 0)."""
    return (
        f'name: "{config.name}"\n'
        f'platform: "{_PLATFORMS[config.backend]}"\n'
        f"max_batch_size: {config.max_batch}\n"
        f"input {_tensor_block(inputs)}\n"
        f"output {_tensor_block(outputs)}\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {config.max_queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {config.instances}\n    kind: {config.kind}\n  }}\n"
        "]\n"
    )


def _readme(config: TritonRepoConfig, repo: Path, plugin: str | None) -> str:
    start = f"tritonserver --model-repository={repo}"
    lines = [
        f"# Triton model repository for {config.name}",
        "",
        f"Backend `{_PLATFORMS[config.backend]}`, max batch {config.max_batch}, dynamic batching "
        f"with a {config.max_queue_delay_us} us queue delay. Start it with:",
        "",
        "```",
    ]
    if plugin:
        autoload = repo / config.name / "plugins" / plugin
        lines += [
            f'{start} \\\n    --backend-config=tensorrt,plugins="{autoload}"',
            "```",
            "",
            "The engine uses the stn GridSample plugin. Triton's TensorRT backend dlopen()s each "
            f"library in `plugins=`; `{plugin}` then registers the plugin's creators with the "
            "TensorRT already in the process (the plugin library next to it, which it links, "
            "holds the kernels). In a container, mount the repository and use the path inside "
            "it. `LD_PRELOAD` does not work: it runs before TensorRT is loaded, and the library "
            "says so on stderr.",
        ]
    else:
        lines += [start, "```"]
    lines += [
        "",
        "Clients do not change: the same KServe v2 endpoints and tensor names as "
        "`stn-deploy serve` (POST /v2/models/NAME/infer, input `input`, outputs `logits`, ...).",
        "",
    ]
    return "\n".join(lines)


def write_triton_repo(
    out_dir: str | os.PathLike,
    config: TritonRepoConfig,
    *,
    onnx_path: str | os.PathLike | None = None,
    engine_path: str | os.PathLike | None = None,
    plugin_lib: str | os.PathLike | None = None,
    specs: tuple[Sequence[TensorSpec], Sequence[TensorSpec]] | None = None,
) -> list[Path]:
    """Write the repository for one model; return the files written.

    The tensor specs come from ``specs`` or from ``onnx_path`` (which an engine was built from).
    """
    model_file = onnx_path if config.backend == "onnxruntime" else engine_path
    if model_file is None or not Path(model_file).is_file():
        need = "an ONNX file" if config.backend == "onnxruntime" else "an engine (--engine)"
        raise SessionError(f"backend {config.backend} needs {need}; got {model_file}")
    if specs is None:
        if onnx_path is None:
            raise SessionError("tensor specs unknown: pass the ONNX file the engine was built from")
        specs = onnx_specs(onnx_path)
    inputs, outputs = specs
    repo = Path(out_dir).resolve()
    model_dir = repo / config.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    written = [model_dir / "config.pbtxt", model_dir / "1" / _FILES[config.backend]]
    written[0].write_text(config_pbtxt(config, inputs, outputs))
    shutil.copyfile(model_file, written[1])
    autoload_name = None
    if plugin_lib is not None:
        lib = Path(plugin_lib)
        autoload = lib.with_name(f"{lib.stem}_autoload{lib.suffix}")
        for path in (lib, autoload):
            if not path.is_file():
                raise SessionError(
                    f"{path} does not exist; Triton needs the plugin library and its autoload "
                    "companion side by side: stn-deploy plugins build (builds both)"
                )
        (model_dir / "plugins").mkdir(exist_ok=True)
        for path in (lib, autoload):
            written.append(model_dir / "plugins" / path.name)
            shutil.copyfile(path, written[-1])
        autoload_name = autoload.name
    written.append(model_dir / "README.md")
    written[-1].write_text(_readme(config, repo, autoload_name))
    return written
