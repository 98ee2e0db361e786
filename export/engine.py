"""Build a TensorRT engine from an exported ONNX file, and write its sidecar.

``build_engine`` is what ``stn-deploy build`` runs: it inspects the ONNX (input shape, fp32 or
fp16, built-in GridSample or our plugin nodes), loads the plugin library into TensorRT's
registry when the graph needs it, parses with TensorRT's ONNX parser (errors listed node by
node), builds with one optimisation profile over the batch, and writes the engine and its
JSON sidecar atomically.

TensorRT 10 vs 11 vs TensorRT-RTX (see ../shared/DESIGN.md): 10.x builds fp16 from an fp32
graph with the FP16 builder flag, and an fp16 graph as a strongly typed network; 11.x and
TensorRT-RTX 1.x have only strongly typed networks, so an fp16 engine needs the fp16 ONNX
(``stn-deploy export ... --precision fp16``). fp32 engines are built with TF32 off, or
convolutions would miss the 1e-4 parity target. TensorRT-RTX can also build ahead of time
without a GPU (``compute_capability="8.6"``); the sidecar then records the targets instead of a
probed GPU. A graph with a static batch gets the profile min = opt = max = that batch.

The TensorRT calls (export/engine_trt.py) run in CI with the real TensorRT-RTX builder on a CPU
(tests/export/test_engine_rtx.py); TensorRT 10/11 builds need a GPU (`make trt-check`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stn_deploy.export.contract import PLUGIN_DOMAIN as PLUGIN_NAMESPACE
from stn_deploy.export.errors import ExportError
from stn_deploy.runtime import engine_meta
from stn_deploy.runtime.engine_meta import BatchProfile, EngineMeta

__all__ = [
    "EngineBuildError",
    "OnnxInfo",
    "PrecisionPlan",
    "BuildResult",
    "resolve_batch_profile",
    "profile_for",
    "inspect_onnx",
    "plan_precision",
    "format_parser_errors",
    "find_plugin",
    "build_engine",
]

log = logging.getLogger(__name__)

PLUGIN_DOMAIN = PLUGIN_NAMESPACE
DEFAULTS = BatchProfile()


class EngineBuildError(ExportError):
    """TensorRT could not parse or build the ONNX file, or the request cannot be built."""


# -- pure parts --------------------------------------------------------------------------------
def resolve_batch_profile(
    min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None
) -> BatchProfile:
    """Fill unset batch sizes from the defaults (1 / 32 / 256) so that min <= opt <= max holds.

    A default never contradicts what the user set: ``--max-batch 8`` alone gives 1/8/8, and
    ``--min-batch 300`` alone gives 300/300/300. Contradicting explicit values raise
    EngineBuildError naming them.
    """
    lo = min_batch if min_batch is not None else DEFAULTS.min
    hi = max_batch if max_batch is not None else max(DEFAULTS.max, lo, opt_batch or 0)
    opt = opt_batch if opt_batch is not None else min(max(DEFAULTS.opt, lo), hi)
    try:
        return BatchProfile(lo, opt, hi)
    except ValueError as exc:
        raise EngineBuildError(str(exc)) from exc


@dataclass(frozen=True)
class OnnxInfo:
    """What the build needs to know about an ONNX file."""

    input_name: str
    input_shape: tuple[int, ...]  # per-sample [C, H, W]
    batch_dynamic: bool
    precision: str  # "fp32" | "fp16"
    flavour: str  # "standard" (TensorRT's built-in GridSample) | "plugin" (our plugin nodes)
    plugin_ops: tuple[str, ...] = ()
    static_batch: int | None = None  # the batch of a graph whose batch dimension is fixed


_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_FLOAT = 1


def inspect_onnx(path: str | os.PathLike) -> OnnxInfo:
    """Read input name/shape, precision and flavour from an ONNX file (weights not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EngineBuildError(
            f"ONNX file {str(path)!r} does not exist; export one with: "
            "stn-deploy export CKPT_DIR --out model.onnx"
        )
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise EngineBuildError(f"{str(path)!r} is not an ONNX model ({exc})") from exc
    return info_from_model(model, str(path))


def info_from_model(model, where: str = "the model") -> OnnxInfo:
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EngineBuildError(
            f"{where} has {len(inputs)} inputs ({[i.name for i in inputs]}); stn-deploy builds "
            "single-input image models [N, C, H, W]"
        )
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        shown = ["?" if d is None else d for d in dims]
        raise EngineBuildError(
            f"input {inputs[0].name!r} of {where} has shape {shown}; expected [N, C, H, W] with "
            "fixed C, H, W (only the batch may be dynamic)"
        )
    plugin_ops = sorted({n.op_type for n in graph.node if n.domain == PLUGIN_DOMAIN})
    uses_domain = any(op.domain == PLUGIN_DOMAIN for op in model.opset_import)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("stn_deploy.precision") in ("fp32", "fp16"):  # written by the exporter
        precision = meta["stn_deploy.precision"]
    elif tensor_type.elem_type == _FLOAT16 or any(
        init.data_type == _FLOAT16 for init in graph.initializer
    ):
        precision = "fp16"
    else:
        precision = "fp32"
    return OnnxInfo(
        input_name=inputs[0].name,
        input_shape=tuple(int(d) for d in dims[1:]),
        batch_dynamic=dims[0] is None,
        precision=precision,
        flavour="plugin" if (plugin_ops or uses_domain) else "standard",
        plugin_ops=tuple(plugin_ops),
        static_batch=None if dims[0] is None else int(dims[0]),
    )


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str
    strongly_typed: bool
    fp16_flag: bool


def profile_for(
    info: OnnxInfo,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    onnx_path: str = "MODEL.onnx",
) -> BatchProfile:
    """The batch profile: the defaults for a dynamic batch, min = opt = max for a static one."""
    if info.static_batch is None:
        return resolve_batch_profile(min_batch, opt_batch, max_batch)
    n = info.static_batch
    asked = {k: v for k, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch),
                               ("--max-batch", max_batch)) if v is not None and v != n}  # fmt: skip
    if asked:
        given = ", ".join(f"{k} {v}" for k, v in asked.items())
        raise EngineBuildError(
            f"{onnx_path} has a static batch of {n} (input {info.input_name!r} is "
            f"[{n}, {', '.join(map(str, info.input_shape))}]), so its engine runs batch {n} only "
            f"and cannot take {given}. Drop those options, or re-export with a dynamic batch: "
            "stn-deploy export CKPT_DIR --out model.onnx"
        )
    return BatchProfile(n, n, n)


def plan_precision(
    requested: str | None,
    onnx_precision: str,
    trt_major: int,
    onnx_path: str = "MODEL.onnx",
    *,
    rtx: bool = False,
) -> PrecisionPlan:
    """Decide network typing and builder flags, or refuse with the command that fixes it.

    ``rtx``: TensorRT-RTX (version 1.x), which, like TensorRT 11, has only strongly typed
    networks.
    """
    if requested not in (None, "fp32", "fp16"):
        raise EngineBuildError(f"precision must be fp32 or fp16, got {requested!r}")
    strongly_only = rtx or trt_major >= 11
    name = "TensorRT-RTX" if rtx else f"TensorRT {trt_major}"
    if not rtx and trt_major < 10:
        raise EngineBuildError(
            f"TensorRT {trt_major}.x is too old: stn-deploy needs TensorRT >= 10.0 "
            "(IPluginV3, tensor-name I/O); pip install --upgrade tensorrt"
        )
    want = requested or onnx_precision
    if onnx_precision == "fp16":
        if want == "fp32":
            raise EngineBuildError(
                f"{onnx_path} is an fp16 graph and cannot make an fp32 engine; export an fp32 "
                "ONNX with: stn-deploy export CKPT_DIR --out model.onnx --precision fp32"
            )
        return PrecisionPlan("fp16", strongly_typed=True, fp16_flag=False)
    if want == "fp16":
        if strongly_only:
            raise EngineBuildError(
                f"{name} builds only strongly typed networks (no FP16 builder "
                f"flag), and {onnx_path} is fp32. Export the fp16 graph and build that: "
                "stn-deploy export CKPT_DIR --out model-fp16.onnx --precision fp16 && "
                "stn-deploy build model-fp16.onnx --out model-fp16.engine"
            )
        return PrecisionPlan("fp16", strongly_typed=False, fp16_flag=True)
    return PrecisionPlan("fp32", strongly_typed=strongly_only, fp16_flag=False)


def format_parser_errors(errors: Sequence, where: str) -> str:
    """One line per TensorRT ONNX-parser error: node index, name, op, error code, description."""
    lines = [f"TensorRT's ONNX parser rejected {where} ({len(errors)} error(s)):"]
    for error in errors:
        node = _call(error, "node", -1)
        name = _call(error, "node_name", "")
        op = _call(error, "node_operator", "")
        code = _call(error, "code", "?")
        code = getattr(code, "name", str(code).rsplit(".", 1)[-1])
        label = f"node {node}" if node is not None and node >= 0 else "graph"
        bits = (f"name {name!r}" if name else "", f"op {op}" if op else "")
        detail = ", ".join(bit for bit in bits if bit)
        where_in = f"{label} ({detail})" if detail else label
        lines.append(f"  {where_in}: [{code}] {_call(error, 'desc', '')}")
    return "\n".join(lines)


def _call(obj, method: str, default):
    fn = getattr(obj, method, None)
    try:
        return fn() if callable(fn) else default
    except (AttributeError, RuntimeError, TypeError):  # an older binding's accessor
        return default


# -- the build ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    meta: EngineMeta
    seconds: float

    def summary(self) -> str:
        m = self.meta
        size = self.engine_path.stat().st_size / 2**20 if self.engine_path.exists() else 0.0
        name = engine_meta.TENSORRT_NAMES[m.tensorrt_module]
        where = (f"ahead of time for compute capability {m.compute_capability} (no GPU probed)"
                 if m.ahead_of_time else f"on {m.gpu_name} (sm {m.compute_capability})")
        return (
            f"built {self.engine_path} ({size:.1f} MiB) in {self.seconds:.1f} s: {m.flavour} "
            f"{m.precision}, batch {m.batch.min}/{m.batch.opt}/{m.batch.max}, {name} "
            f"{m.tensorrt_version} {where}"
        )  # fmt: skip


def _import_trt(module: str | None = None):
    from stn_deploy.runtime.session import BackendUnavailableError
    from stn_deploy.runtime.trt_module import import_tensorrt

    try:
        return import_tensorrt(module)
    except BackendUnavailableError as exc:
        raise EngineBuildError(str(exc)) from exc


def find_plugin(info: OnnxInfo, plugin_lib, onnx_path: Path) -> Path | None:
    """The plugin library a plugin-flavour graph needs (None for the built-in flavour)."""
    if info.flavour != "plugin":
        if plugin_lib:
            log.warning("%s uses no stn plugin nodes; --plugin-lib is not needed", onnx_path)
        return None
    path, tried = engine_meta.locate_plugin_library(plugin_lib)
    if path is None:
        ops = ", ".join(info.plugin_ops) or "domain stn"
        raise EngineBuildError(
            engine_meta.missing_plugin_message(tried, f"{onnx_path} (plugin flavour: {ops})")
        )
    return path


def _load_plugin(trt, path: Path | None) -> None:
    from stn_deploy.runtime.engine_meta import PluginLibraryError
    from stn_deploy.runtime.trt_module import load_plugin_library, rtx_parser_problem

    if path is None:
        return
    problem = rtx_parser_problem(trt)  # checked before the parser can abort the process
    if problem:
        raise EngineBuildError(problem)
    try:
        load_plugin_library(trt, path)  # once per process, shared with sessions
    except PluginLibraryError as exc:
        raise EngineBuildError(str(exc)) from exc


def _target(trt, flavour, targets: tuple[str, ...], device: int):
    """(gpu name or None, compute capability text) of what the engine is built for."""
    from stn_deploy.export.engine_trt import compute_capability_members
    from stn_deploy.runtime.cuda_util import load_cuda
    from stn_deploy.runtime.session import BackendUnavailableError

    if targets:
        if not compute_capability_members(trt):
            raise EngineBuildError(
                f"--compute-capability needs TensorRT-RTX (pip install 'stn-deploy[trt-rtx]', "
                f"then --tensorrt tensorrt-rtx); {flavour.label} builds only for the GPU it runs "
                "on"
            )
        return None, ",".join(targets)
    try:
        cuda = load_cuda(device)
    except BackendUnavailableError as exc:
        if flavour.rtx:
            known = ", ".join(compute_capability_members(trt))
            raise EngineBuildError(
                f"{exc}. {flavour.label} can build without a GPU, ahead of time: add "
                f"--compute-capability with the target GPU's (one of {known}), e.g. "
                "--compute-capability 8.6"
            ) from exc
        raise
    cuda.set_device()  # the builder tunes for the current device
    gpu = cuda.info()
    return gpu.name, gpu.compute_capability


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    plugin_lib: str | os.PathLike | None = None,
    precision: str | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    version_compatible: bool = False,
    workspace_mib: int | None = None,
    device: int = 0,
    tensorrt: str | None = None,
    compute_capability: str | Sequence[str] | None = None,
    report: Callable[[str], None] = print,
) -> BuildResult:
    """Build ``onnx_path`` into ``out_path`` (+ ``out_path.json``); see the module docstring.

    ``tensorrt``: "tensorrt" or "tensorrt_rtx" (default: the one installed; TensorRT-RTX when
    ``compute_capability`` is given). ``compute_capability``: TensorRT-RTX only, "8.6" or
    "8.6,8.9": build ahead of time for those GPUs without probing one.
    """
    from stn_deploy import __version__
    from stn_deploy.export import engine_trt
    from stn_deploy.runtime.trt_module import flavour_of

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    info = inspect_onnx(onnx_path)
    profile = profile_for(info, min_batch, opt_batch, max_batch, str(onnx_path))
    targets = engine_trt.parse_compute_capabilities(compute_capability)
    plugin = find_plugin(info, plugin_lib, onnx_path)
    trt = _import_trt(tensorrt or ("tensorrt_rtx" if targets else None))
    flavour = flavour_of(trt)
    plan = plan_precision(precision, info.precision, flavour.major, str(onnx_path),
                          rtx=flavour.rtx)  # fmt: skip
    gpu_name, capability = _target(trt, flavour, targets, device)
    where = f"for compute capability {capability} (ahead of time)" if targets else f"on {gpu_name}"
    report(f"building {onnx_path} ({info.flavour}, {plan.precision}) with {flavour.label} "
           f"{where}")  # fmt: skip

    logger = trt.Logger(trt.Logger.WARNING)
    _load_plugin(trt, plugin)
    builder = trt.Builder(logger)
    # The parser owns the weights the network points at: keep it alive until the build ends.
    network, _parser = engine_trt.parse_network(trt, builder, logger, plan.strongly_typed,
                                                onnx_path)  # fmt: skip
    config = builder.create_builder_config()
    opts = {"workspace_mib": workspace_mib, "version_compatible": version_compatible,
            "timing_cache": timing_cache}  # fmt: skip
    done = engine_trt.configure(trt, builder, config, input_name=info.input_name,
                                shapes=profile.shapes(info.input_shape), plan=plan,
                                targets=targets, label=flavour.label, rtx=flavour.rtx,
                                opts=opts)  # fmt: skip
    embedded = bool(version_compatible and plugin)
    if embedded:
        config.plugins_to_serialize = [str(plugin)]  # the library travels inside the engine
    monitor = engine_trt.progress_monitor(trt, report)
    if monitor is not None:
        config.progress_monitor = monitor

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError(
            f"{flavour.label} could not build {onnx_path} (see its log above); try a larger "
            "--workspace, or check the graph with: stn-deploy check " + str(onnx_path)
        )
    data = bytes(serialized)
    if not data:
        raise EngineBuildError(f"{flavour.label} returned an empty engine for {onnx_path}")
    engine_meta.atomic_write(out_path, data)
    if done["timing_cache"]:
        engine_trt.save_timing_cache(config, Path(timing_cache))
    meta = EngineMeta(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        onnx_path=str(onnx_path),
        onnx_sha256=engine_meta.sha256_file(onnx_path),
        precision=plan.precision,
        flavour=info.flavour,
        input_name=info.input_name,
        input_shape=info.input_shape,
        batch=profile,
        plugin_lib=str(plugin) if plugin else None,
        plugin_sha256=engine_meta.sha256_file(plugin) if plugin else None,
        plugin_embedded=embedded,
        version_compatible=version_compatible,
        workspace_mib=workspace_mib,
        timing_cache=str(timing_cache) if timing_cache else None,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        build_seconds=round(seconds, 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        stn_deploy_version=__version__,
        profiles=(done["profile"],),
        tensorrt_module=flavour.module,
        ahead_of_time=bool(targets),
    )
    sidecar = engine_meta.write_meta(out_path, meta)
    result = BuildResult(out_path, sidecar, meta, seconds)
    report(result.summary())
    return result
