"""The TensorRT calls of an engine build: parse, configure, check every result, read back.

:func:`stn_deploy.export.engine.build_engine` runs these in order. Each TensorRT call whose
result can say "no" (``add_optimization_profile`` -> -1, ``set_compute_capability`` -> False,
``get_timing_cache`` -> None, ``set_timing_cache`` -> False) is checked here and turned into an
:class:`~stn_deploy.export.engine.EngineBuildError` or a logged warning that names the fix.
The same code drives TensorRT 10.x, 11.x and TensorRT-RTX 1.x; CI runs it with the real
TensorRT-RTX builder on a CPU (tests/export/test_engine_rtx.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stn_deploy.export.errors import ExportError

__all__ = [
    "parse_network",
    "configure",
    "progress_monitor",
    "parse_compute_capabilities",
    "compute_capability_members",
    "TIMING_CACHE_IGNORED",
]

log = logging.getLogger(__name__)

TIMING_CACHE_IGNORED = (
    "TensorRT-RTX keeps no timing cache (its timing-cache calls are no-ops); --timing-cache "
    "{path} is ignored"
)


def _error(message: str) -> ExportError:
    from stn_deploy.export.engine import EngineBuildError

    return EngineBuildError(message)


# -- ahead-of-time targets (TensorRT-RTX) --------------------------------------------------------
def parse_compute_capabilities(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'8.6' / '86,89' / 'sm_86' -> ('8.6',) / ('8.6', '8.9'); () for None. Syntax only."""
    if not text:
        return ()
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in (i.strip().lower() for i in items if i.strip()):
        match = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d))?", item)
        if match is None:
            raise _error(f"bad --compute-capability {item!r}; expected e.g. 8.6 or 8.6,8.9")
        major, minor = match.groups()
        if minor is None:  # "86" -> 8.6, "120" -> 12.0
            major, minor = major[:-1], major[-1]
        value = f"{int(major)}.{minor}"
        if value not in out:
            out.append(value)
    return tuple(out)


def compute_capability_members(trt) -> dict[str, object]:
    """'8.6' -> trt.ComputeCapability.SM86 for every target this TensorRT-RTX can build for."""
    enum = getattr(trt, "ComputeCapability", None)
    members = getattr(enum, "__members__", {}) if enum is not None else {}
    out = {}
    for name, member in members.items():
        match = re.fullmatch(r"SM(\d+)(\d)", name)
        if match:
            out[f"{int(match.group(1))}.{match.group(2)}"] = member
    return out


def _set_targets(trt, config, targets: Sequence[str], label: str) -> None:
    members = compute_capability_members(trt)
    missing = [t for t in targets if t not in members]
    if missing:
        raise _error(
            f"{label} cannot build for compute capability {', '.join(missing)}; it builds for "
            f"{', '.join(members)} (e.g. --compute-capability 8.6)"
        )
    config.num_compute_capabilities = len(targets)  # trt-api: rtx
    for index, target in enumerate(targets):
        if not config.set_compute_capability(members[target], index):  # trt-api: rtx
            raise _error(f"{label} refused compute capability {target} (see its log above)")


# -- parse -------------------------------------------------------------------------------------
def parse_network(trt, builder, logger, strongly_typed: bool, onnx_path: Path):
    """(network, parser) for ``onnx_path``; parser errors listed node by node."""
    from stn_deploy.export.engine import format_parser_errors

    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    if network is None:
        raise _error("TensorRT could not create a network definition (see its log above)")
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))  # from a file: external weights resolve
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not ok or errors:
        raise _error(format_parser_errors(errors, str(onnx_path)))
    return network, parser


# -- configure ---------------------------------------------------------------------------------
def _profile(builder, config, input_name: str, shapes: Sequence[tuple[int, ...]]) -> dict:
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    index = config.add_optimization_profile(profile)
    if index is None or index < 0:
        lo, opt, hi = (list(s) for s in shapes)
        raise _error(
            f"TensorRT rejected the optimisation profile of input {input_name!r} "
            f"(min {lo}, opt {opt}, max {hi}; see its log above). The batch sizes must satisfy "
            "min <= opt <= max, and a graph with a static batch needs min = opt = max = that "
            "batch; re-export with a dynamic batch (stn-deploy export) to serve other sizes"
        )
    # What TensorRT holds, not what was asked: the sidecar records this.
    got = [tuple(int(d) for d in dims) for dims in profile.get_shape(input_name)]
    return {"input": input_name, "index": int(index), "min": list(got[0]),
            "opt": list(got[1]), "max": list(got[2])}  # fmt: skip


def _timing_cache(trt, config, path: Path, rtx: bool) -> bool:
    """Attach the timing cache at ``path``; False when this TensorRT keeps none."""
    if rtx:
        log.warning(TIMING_CACHE_IGNORED.format(path=path))
        return False
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return True
    log.warning("timing cache %s is from another GPU/TensorRT; starting a fresh one", path)
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        log.warning("TensorRT refused a fresh timing cache; building without %s", path)
        return False
    return True


def configure(trt, builder, config, *, input_name: str, shapes, plan, targets=(), label="",
              rtx: bool = False, opts: dict | None = None) -> dict:  # fmt: skip
    """Flags, memory, the batch profile, targets and timing cache; returns what to record.

    The result: ``{"profile": {...as TensorRT holds it...}, "timing_cache": bool}``.
    """
    opts = opts or {}
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)  # trt-api: 10 (plan_precision sets it on 10.x only)
    if plan.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.get("workspace_mib"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_mib"]) << 20)
    profile = _profile(builder, config, input_name, shapes)
    if opts.get("version_compatible"):
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if targets:
        _set_targets(trt, config, targets, label)
    cache_path = opts.get("timing_cache")
    cached = bool(cache_path) and _timing_cache(trt, config, Path(cache_path), rtx)
    return {"profile": profile, "timing_cache": cached}


def save_timing_cache(config, path: Path) -> bool:
    """Write the builder's timing cache to ``path``; False (logged) when TensorRT has none."""
    from stn_deploy.runtime import engine_meta

    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT returned no timing cache after the build; %s not written", path)
        return False
    engine_meta.atomic_write(path, bytes(cache.serialize()))
    return True


def progress_monitor(trt, report: Callable[[str], None]):
    """A trt.IProgressMonitor that reports top-level phases (None if this TensorRT lacks it)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                report(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # returning False would cancel the build

        def phase_finish(self, phase_name):
            started = self.started.pop(phase_name, None)
            if started is not None and not self.started:
                report(f"  {phase_name} done in {time.perf_counter() - started:.1f} s")

    return Monitor()
