"""The JSON sidecar of a TensorRT engine: what it was built from and for, checked before loading.

A serialized engine only runs on the TensorRT version and GPU it was built for, and a plugin
engine needs the very plugin library it was built with. ``stn-deploy build`` writes
``MODEL.engine.json`` next to ``MODEL.engine``; :func:`check_meta` compares it with the running
TensorRT and GPU and raises :class:`EngineMismatchError` carrying the exact rebuild command.

Policy (documented in the README's TensorRT section):

* TensorRT module and version: the module (``tensorrt`` or ``tensorrt_rtx``) and its
  major.minor.patch must equal the build's (engines are not portable across versions). A
  ``--version-compatible`` engine also runs on a newer TensorRT of the same major.
* GPU: compute capability and GPU name must both match (TensorRT refuses another architecture
  and warns that another model of the same architecture may be slow or wrong). An engine built
  ahead of time (TensorRT-RTX ``--compute-capability``, no GPU probed) records its target
  compute capabilities instead of a GPU; any GPU of one of them may run it.
* Plugin library: its sha256 must match the build's unless the library is embedded in a
  version-compatible engine.
* The engine file's sha256 must match (the sidecar describes this engine, not an older one).
* A missing sidecar (an engine from ``trtexec``, say) is a warning in ``check`` mode and an
  error in ``strict`` mode; TensorRT's own deserialisation still refuses a truly incompatible
  engine, only with a less helpful message.

Also here, because the runtime and the builder both need it and the runtime may not import the
export package: where the plugin library is looked for (:func:`locate_plugin_library`).
Nothing in this module imports tensorrt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from stn_deploy.runtime.session import SessionError

__all__ = [
    "SIDECAR_SUFFIX",
    "SCHEMA_VERSION",
    "PLUGIN_ENV",
    "PLUGIN_LIBRARY_NAMES",
    "BatchProfile",
    "EngineMeta",
    "RunningEnv",
    "EngineMismatchError",
    "SidecarError",
    "PluginLibraryError",
    "sidecar_path",
    "write_meta",
    "read_meta",
    "check_meta",
    "rebuild_command",
    "sha256_file",
    "default_plugin_locations",
    "locate_plugin_library",
    "missing_plugin_message",
    "version_tuple",
    "describe_engine",
]

SIDECAR_SUFFIX = ".json"
SCHEMA_VERSION = 1
PLUGIN_ENV = "STN_PLUGIN_LIB"
# File names looked for directly under plugins/build, then any libstn*.so below it whose name
# does not contain "cpu".
PLUGIN_LIBRARY_NAMES = ("libstn_gridsample_plugin.so", "libstn_plugins.so")
PLUGIN_GLOB = "libstn*.so"
SIDECAR_MODES = ("check", "strict", "off")
# As the exporter names them: "standard" runs TensorRT's built-in GridSample layer, "plugin" ours.
FLAVOURS = ("standard", "plugin")
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx")
TENSORRT_NAMES = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}


class SidecarError(SessionError):
    """A sidecar is missing (strict mode), unreadable or from an unknown schema."""


class EngineMismatchError(SessionError):
    """The engine was built for another TensorRT, GPU or plugin library than the running one."""


class PluginLibraryError(SessionError):
    """The GridSample plugin library an engine needs cannot be found or loaded."""


@dataclass(frozen=True)
class BatchProfile:
    """Minimum, optimum and maximum batch of the engine's one optimisation profile."""

    min: int = 1
    opt: int = 32
    max: int = 256

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"batch {name} must be an integer >= 1, got {value!r} "
                    "(example: --min-batch 1 --opt-batch 32 --max-batch 256)"
                )
        if not self.min <= self.opt <= self.max:
            raise ValueError(
                f"batch profile needs min <= opt <= max, got min={self.min} opt={self.opt} "
                f"max={self.max} (example: --min-batch 1 --opt-batch 32 --max-batch 256)"
            )

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes [N, C, H, W] for an input of per-sample shape ``chw``."""
        rest = tuple(int(d) for d in chw)
        return tuple((n, *rest) for n in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class RunningEnv:
    """What the engine is about to run on: TensorRT version, GPU name, compute capability."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    tensorrt_module: str = "tensorrt"


@dataclass(frozen=True)
class EngineMeta:
    """Everything ``stn-deploy build`` knows about an engine; serialised as the sidecar."""

    tensorrt_version: str
    gpu_name: str | None  # None: built ahead of time, no GPU probed (see ahead_of_time)
    compute_capability: str  # "8.9"; ahead of time: the targets, "8.6" or "8.6,8.9"
    onnx_path: str
    onnx_sha256: str
    precision: str
    flavour: str
    input_name: str
    input_shape: tuple[int, ...]  # per-sample [C, H, W]
    batch: BatchProfile
    plugin_lib: str | None = None
    plugin_sha256: str | None = None
    plugin_embedded: bool = False
    version_compatible: bool = False
    workspace_mib: int | None = None
    timing_cache: str | None = None
    engine_sha256: str | None = None
    build_seconds: float | None = None
    built_at: str | None = None
    stn_deploy_version: str | None = None
    profiles: tuple[dict, ...] = field(default=())
    tensorrt_module: str = "tensorrt"  # or "tensorrt_rtx"
    ahead_of_time: bool = False  # built for compute_capability without probing a GPU
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {self.precision!r}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        if self.tensorrt_module not in TENSORRT_MODULES:
            raise ValueError(f"tensorrt_module must be one of {TENSORRT_MODULES}, got "
                             f"{self.tensorrt_module!r}")  # fmt: skip
        if not self.profiles:
            lo, opt, hi = self.batch.shapes(self.input_shape)
            profile = {"input": self.input_name, "min": list(lo), "opt": list(opt), "max": list(hi)}
            object.__setattr__(self, "profiles", (profile,))

    def to_json(self) -> str:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["profiles"] = list(self.profiles)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping) -> EngineMeta:
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise SidecarError(
                f"sidecar schema {schema!r} is not the one this stn-deploy reads "
                f"({SCHEMA_VERSION}); rebuild the engine with stn-deploy build"
            )
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["batch"] = BatchProfile(**data["batch"])
        kwargs["input_shape"] = tuple(data["input_shape"])
        kwargs["profiles"] = tuple(data.get("profiles", ()))
        return cls(**kwargs)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_meta(engine_path: str | os.PathLike, meta: EngineMeta) -> Path:
    """Write the sidecar of ``engine_path`` atomically; return its path."""
    return atomic_write(sidecar_path(engine_path), meta.to_json().encode())


def read_meta(engine_path: str | os.PathLike) -> EngineMeta | None:
    """The engine's sidecar, or None when there is none. Raises SidecarError if unreadable."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return EngineMeta.from_dict(data)
    except SidecarError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SidecarError(
            f"sidecar {str(path)!r} is not a valid stn-deploy engine description ({exc}); "
            "rebuild the engine with stn-deploy build MODEL.onnx --out ENGINE"
        ) from exc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def version_tuple(version: str, parts: int = 3) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0); missing parts are 0, non-numeric suffixes are ignored."""
    numbers = [int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in version.split(".")]
    numbers = (numbers + [0] * parts)[:parts]
    return tuple(numbers)


def rebuild_command(meta: EngineMeta, engine_path: str | os.PathLike) -> str:
    """The ``stn-deploy build`` command that reproduces ``meta`` for the running machine."""
    q = shlex.quote
    words = [
        "stn-deploy", "build", q(meta.onnx_path), "--out", q(str(engine_path)),
        "--precision", meta.precision,
        "--min-batch", str(meta.batch.min),
        "--opt-batch", str(meta.batch.opt),
        "--max-batch", str(meta.batch.max),
    ]  # fmt: skip
    if meta.tensorrt_module != "tensorrt":
        words += ["--tensorrt", meta.tensorrt_module.replace("_", "-")]
    if meta.ahead_of_time:
        words += ["--compute-capability", meta.compute_capability]
    if meta.plugin_lib:
        words += ["--plugin-lib", q(meta.plugin_lib)]
    if meta.version_compatible:
        words.append("--version-compatible")
    if meta.workspace_mib:
        words += ["--workspace", str(meta.workspace_mib)]
    if meta.timing_cache:
        words += ["--timing-cache", q(meta.timing_cache)]
    return " ".join(words)


def _tensorrt_problem(meta: EngineMeta, running: RunningEnv) -> str | None:
    if meta.tensorrt_module != running.tensorrt_module:
        return (
            f"it was built with {TENSORRT_NAMES[meta.tensorrt_module]} {meta.tensorrt_version}, "
            f"this process runs {TENSORRT_NAMES.get(running.tensorrt_module, 'TensorRT')} "
            f"{running.tensorrt_version} (an engine runs only on the TensorRT it was built with)"
        )
    built, now = version_tuple(meta.tensorrt_version), version_tuple(running.tensorrt_version)
    if built == now:
        return None
    if meta.version_compatible and now[0] == built[0] and now > built:
        return None
    kind = "a version-compatible engine runs only on the same or a newer TensorRT of the same " \
        "major version" if meta.version_compatible else "engines are tied to one TensorRT version"
    name = TENSORRT_NAMES[meta.tensorrt_module]
    return (
        f"it was built with {name} {meta.tensorrt_version}, this machine runs "
        f"{name} {running.tensorrt_version} ({kind})"
    )


def _gpu_problem(meta: EngineMeta, running: RunningEnv) -> str | None:
    if meta.ahead_of_time or meta.gpu_name is None:
        targets = [c.strip() for c in meta.compute_capability.split(",")]
        if running.compute_capability in targets:
            return None
        return (
            f"it was built ahead of time for compute capability {meta.compute_capability}, "
            f"this GPU is {running.gpu_name} (compute capability {running.compute_capability})"
        )
    if meta.compute_capability != running.compute_capability:
        return (
            f"it was built for {meta.gpu_name} (compute capability {meta.compute_capability}), "
            f"this GPU is {running.gpu_name} (compute capability {running.compute_capability})"
        )
    if meta.gpu_name != running.gpu_name:
        return (
            f"it was built on {meta.gpu_name!r}, this GPU is {running.gpu_name!r} (same compute "
            f"capability {running.compute_capability}, but TensorRT tunes an engine for one GPU "
            "model; another may run it slowly or wrongly)"
        )
    return None


def check_meta(
    meta: EngineMeta | None,
    running: RunningEnv,
    engine_path: str | os.PathLike,
    *,
    plugin_lib: str | os.PathLike | None = None,
    engine_sha256: str | None = None,
    mode: str = "check",
) -> list[str]:
    """Raise if the engine cannot run here; return warnings (e.g. a missing sidecar).

    ``plugin_lib`` is the library that is about to be loaded (None: none found);
    ``engine_sha256`` the engine file's hash when the caller has computed it.
    """
    if mode not in SIDECAR_MODES:
        raise ValueError(f"sidecar mode must be one of {SIDECAR_MODES}, got {mode!r}")
    if mode == "off":
        return []
    if meta is None:
        message = (
            f"engine {str(engine_path)!r} has no sidecar {str(sidecar_path(engine_path))!r}: "
            "cannot check its TensorRT version, GPU and plugin library before loading; "
            "build engines with `stn-deploy build MODEL.onnx --out ENGINE` to get one"
        )
        if mode == "strict":
            raise SidecarError(message)
        return [message]
    problems = [p for p in (_tensorrt_problem(meta, running), _gpu_problem(meta, running)) if p]
    if engine_sha256 and meta.engine_sha256 and engine_sha256 != meta.engine_sha256:
        problems.append(
            f"the engine file (sha256 {engine_sha256[:12]}...) is not the one the sidecar "
            f"describes (sha256 {meta.engine_sha256[:12]}...)"
        )
    if meta.flavour == "plugin" and not meta.plugin_embedded and meta.plugin_sha256 and plugin_lib:
        found = sha256_file(plugin_lib)
        if found != meta.plugin_sha256:
            problems.append(
                f"the plugin library {str(plugin_lib)!r} has sha256 {found}, but the engine was "
                f"built with {meta.plugin_lib!r} of sha256 {meta.plugin_sha256}"
            )
    if problems:
        raise EngineMismatchError(
            f"engine {str(engine_path)!r} cannot run here: "
            + "; ".join(problems)
            + f". Rebuild it on this machine with: {rebuild_command(meta, engine_path)}"
        )
    return []


def describe_engine(engine_path: str | os.PathLike) -> str:
    """A short label for tables: 'trt built-in GridSample fp32' / 'trt plugin fp16'."""
    try:
        meta = read_meta(engine_path)
    except SidecarError:
        meta = None
    if meta is None:
        return f"trt {Path(engine_path).name}"
    kind = "built-in GridSample" if meta.flavour == "standard" else "plugin"
    backend = "trt-rtx" if meta.tensorrt_module == "tensorrt_rtx" else "trt"
    return f"{backend} {kind} {meta.precision}"


# -- where the plugin library lives ------------------------------------------------------------
def _package_root() -> Path:
    # runtime/ sits next to plugins/ both in the repository and in an installed stn_deploy.
    return Path(__file__).resolve().parents[1]


def default_plugin_locations(root: Path | None = None) -> list[Path]:
    """Files and folders searched (in order) when no --plugin-lib / STN_PLUGIN_LIB is given."""
    root = _package_root() if root is None else root
    build = root / "plugins" / "build"
    return [build / name for name in PLUGIN_LIBRARY_NAMES] + [build]


def locate_plugin_library(
    explicit: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    root: Path | None = None,
) -> tuple[Path | None, list[str]]:
    """Find the plugin library: ``explicit``, then $STN_PLUGIN_LIB, then the default locations.

    Returns (path or None, every place tried). An explicit path or the environment variable is
    taken as the user's choice: if it does not exist, the search stops there.
    """
    env = os.environ if env is None else env
    tried: list[str] = []
    for given, label in ((explicit, "--plugin-lib"), (env.get(PLUGIN_ENV), f"${PLUGIN_ENV}")):
        if given:
            path = Path(given).expanduser()
            tried.append(f"{path} ({label})")
            return (path.resolve(), tried) if path.is_file() else (None, tried)
    for place in default_plugin_locations(root):
        if place.suffix:
            tried.append(str(place))
            if place.is_file():
                return place.resolve(), tried
        else:
            tried.append(f"{place}/**/{PLUGIN_GLOB}")
            found = sorted(
                p for p in (place.glob(f"**/{PLUGIN_GLOB}") if place.is_dir() else [])
                if "cpu" not in p.name  # the CPU test build of the kernels is no TRT plugin
            )
            if found:
                return found[0].resolve(), tried
    return None, tried


def missing_plugin_message(tried: Sequence[str], what: str) -> str:
    """The message for a plugin library that was needed (for ``what``) and not found."""
    return (
        f"{what} needs the stn GridSample plugin library, which was not found; tried: "
        + ", ".join(tried)
        + ". Build it with `stn-deploy plugins build`, or point to it with --plugin-lib PATH "
        f"or ${PLUGIN_ENV}=PATH"
    )
