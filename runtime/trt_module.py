"""Which TensorRT Python module runs here (TensorRT 10/11 or TensorRT-RTX 1.x), and its registry.

Two members of NVIDIA's TensorRT family share one Python API closely enough for stn-deploy:

* ``tensorrt`` 10.x / 11.x: builds for, and runs on, the GPU it finds (datacenter and RTX GPUs).
* ``tensorrt_rtx`` 1.x (``pip install 'stn-deploy[trt-rtx]'``): TensorRT for RTX GPUs. Its
  builder also works with no GPU at all, ahead of time for a given compute capability
  (``IBuilderConfig.set_compute_capability``; SM 7.5, 8.0, 8.6, 8.9, 12.0, 12.1, no 9.0).
  Like TensorRT 11 it builds only strongly typed networks (no FP16 builder flag).

:func:`import_tensorrt` picks one (an explicit choice, then ``$STN_DEPLOY_TENSORRT``, then
``tensorrt`` before ``tensorrt_rtx``); :func:`flavour_of` says which one a module is.

:func:`rtx_parser_problem` guards a process-killing gap of the TensorRT-RTX 1.7 wheel: its ONNX
parser ``dlopen``s ``libtensorrt_rtx.so`` (the unversioned name) and looks up
``getPrivateApi_INTERNAL`` the first time it adds an IPluginV3 layer, inside a function that
cannot throw; the wheel ships only ``libtensorrt_rtx.so.1``, so the failed ``dlopen`` ends in
``std::terminate`` right after "Successfully created plugin" (see plugins/README.md).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stn_deploy.runtime import engine_meta
from stn_deploy.runtime.session import BackendUnavailableError

__all__ = [
    "MODULES",
    "MODULE_ENV",
    "TENSORRT_INSTALL_HINT",
    "TrtFlavour",
    "import_tensorrt",
    "flavour_of",
    "load_plugin_library",
    "rtx_parser_problem",
]

MODULES = ("tensorrt", "tensorrt_rtx")
MODULE_ENV = "STN_DEPLOY_TENSORRT"
TENSORRT_INSTALL_HINT = (
    "pip install tensorrt (on a machine with an NVIDIA GPU and driver; the wheels come from "
    "NVIDIA's index), or pip install 'stn-deploy[trt]'; for TensorRT-RTX (RTX GPUs, and engine "
    "builds ahead of time without a GPU): pip install 'stn-deploy[trt-rtx]'"
)
LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}


@dataclass(frozen=True)
class TrtFlavour:
    """A TensorRT Python module: its import name and version."""

    module: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def rtx(self) -> bool:
        return self.module == "tensorrt_rtx"

    @property
    def major(self) -> int:
        return engine_meta.version_tuple(self.version)[0]

    @property
    def name(self) -> str:
        return LABELS.get(self.module, self.module)

    @property
    def label(self) -> str:
        """'TensorRT 10.16.1.11' / 'TensorRT-RTX 1.7.1.116'."""
        return f"{self.name} {self.version}"


def flavour_of(trt) -> TrtFlavour:
    """The flavour of an imported TensorRT module (a stand-in may set ``__name__`` too)."""
    name = getattr(trt, "__name__", "tensorrt").split(".")[0]
    module = "tensorrt_rtx" if "rtx" in name else "tensorrt"
    return TrtFlavour(module, str(getattr(trt, "__version__", "0")))


def _wanted(module: str | None) -> list[str]:
    choice = module or os.environ.get(MODULE_ENV) or None
    if choice is None:
        return list(MODULES)
    choice = choice.replace("-", "_")
    if choice not in MODULES:
        raise BackendUnavailableError(
            f"unknown TensorRT module {choice!r}; expected one of {', '.join(MODULES)} "
            f"(--tensorrt or ${MODULE_ENV})"
        )
    return [choice]


def import_tensorrt(module: str | None = None):
    """The TensorRT module to use, or BackendUnavailableError with the install command.

    ``module``: "tensorrt" or "tensorrt_rtx" (default: $STN_DEPLOY_TENSORRT, else the first of
    the two that imports).
    """
    import importlib

    failures = []
    for name in _wanted(module):
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # also catches the stub wheel that failed to fetch the real one
            failures.append(str(exc))
    raise BackendUnavailableError(
        f"TensorRT is not installed here ({'; '.join(failures)}). {TENSORRT_INSTALL_HINT}"
    )


_LOADED_PLUGINS: dict[tuple[str, str], Any] = {}
_PLUGIN_LOCK = threading.Lock()


def load_plugin_library(trt, path: str | os.PathLike) -> Any:
    """Load a plugin library into TensorRT's registry once per process; return its handle.

    Loading the same library again would register its creators twice, which TensorRT refuses;
    every session and build in the process shares the first load (per TensorRT module).
    """
    key = (getattr(trt, "__name__", "tensorrt"), str(Path(path).resolve()))
    with _PLUGIN_LOCK:
        if key not in _LOADED_PLUGINS:
            try:
                handle = trt.get_plugin_registry().load_library(key[1])
            except RuntimeError as exc:  # some bindings raise instead of returning None
                handle, cause = None, f": {exc}"
            else:
                cause = ""
            if handle is None:
                raise engine_meta.PluginLibraryError(
                    f"{flavour_of(trt).name} could not load the plugin library {key[1]!r}{cause} "
                    "(see the TensorRT log above: built for another CUDA/TensorRT, or missing "
                    "symbols); rebuild it with `stn-deploy plugins build`"
                )
            _LOADED_PLUGINS[key] = handle
        return _LOADED_PLUGINS[key]


# -- the TensorRT-RTX parser's unversioned dlopen ----------------------------------------------
RTX_CORE = "libtensorrt_rtx.so"


def _rtx_libs_dir() -> Path | None:
    try:
        import tensorrt_rtx_libs
    except ImportError:
        return None
    return Path(tensorrt_rtx_libs.__file__).resolve().parent


def _loadable(name: str) -> bool:
    try:
        ctypes.CDLL(name)  # RTLD_LOCAL; a second dlopen by the parser then finds it by name
    except OSError:
        return False
    return True


def rtx_alias_dir(version: str) -> Path:
    """Where stn-deploy keeps a ``libtensorrt_rtx.so`` link to the wheel's ``.so.1``."""
    base = os.environ.get("STN_DEPLOY_CACHE") or Path.home() / ".cache" / "stn-deploy"
    return Path(base) / f"tensorrt-rtx-{version}-lib"


def rtx_parser_problem(trt, *, libs: Path | None = None) -> str | None:
    """Why TensorRT-RTX's parser would abort the process on a plugin node here, or None.

    The parser looks for ``libtensorrt_rtx.so`` next to itself ($ORIGIN), on the
    LD_LIBRARY_PATH the process started with, and in the linker cache. When none has it, this
    makes the link in stn-deploy's cache folder and says how to use it.
    """
    flavour = flavour_of(trt)
    if not flavour.rtx:
        return None
    libs = _rtx_libs_dir() if libs is None else libs
    if libs is not None and (libs / RTX_CORE).exists():
        return None
    if _loadable(RTX_CORE):
        return None
    where = "the tensorrt-rtx wheel's folder" if libs is None else str(libs)
    fix = f"ln -s libtensorrt_rtx.so.1 {where}/{RTX_CORE}"
    made = ""
    real = libs / f"{RTX_CORE}.1" if libs is not None else None
    if real is not None and real.is_file():
        alias_dir = rtx_alias_dir(flavour.version)
        try:
            alias_dir.mkdir(parents=True, exist_ok=True)
            link = alias_dir / RTX_CORE
            if not link.exists():
                link.unlink(missing_ok=True)  # a dangling link from an older install
                link.symlink_to(real)
            made = (f" stn-deploy made that link in {alias_dir}: run the command again with "
                    f"LD_LIBRARY_PATH={alias_dir}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}, or")
        except OSError:
            made = " Either set LD_LIBRARY_PATH to a folder holding that link, or"
    return (
        f"{flavour.label}'s ONNX parser loads {RTX_CORE} (an unversioned name the tensorrt-rtx "
        "wheel does not ship) when it adds a plugin layer, and aborts the whole process when "
        f"that fails.{made} make the link once next to the parser: {fix}"
    )
