"""The CPU build of the GridSample kernels: compiled on first use, called through ctypes.

The library is the same sampling code as the CUDA kernels (src/gridSampleMath.h), built by
``g++`` (or ``$CXX``) into ``$STN_DEPLOY_CACHE`` (default ``~/.cache/stn-deploy``) under a name
keyed by the sources' hash and this CPU (it is compiled for the host's instruction set), so a
fresh clone needs only a compiler and an edit rebuilds it. Two kernels per op:

- ``kernel="fast"`` (NCHW): the production kernels (src/cpuGridSampleFast.h), threaded over
  N x output rows and vectorised over pixels, bit-identical to the reference;
- ``kernel="reference"``: one pixel at a time, exactly as a CUDA thread runs the shared
  functions (also the channels-last ``layout="hwc8"`` code path of TensorRT's kHWC8 kernels).

Arrays are NCHW float32; float16 arrays are sampled in float32 and rounded back (exactly what
the fp16 kernels do: fp16 storage, fp32 math).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from stn_deploy.plugins.errors import PluginBuildError, PluginLoadError
from stn_deploy.plugins.names import mode_int, padding_int

__all__ = [
    "SOURCE_DIR",
    "cpu_cache_dir",
    "library_path",
    "load",
    "grid_sample",
    "affine_grid_sample",
    "projective_grid_sample",
    "to_hwc8",
    "from_hwc8",
    "default_threads",
    "sample_into",
    "SOURCES",
]

SOURCE_DIR = Path(__file__).resolve().parent / "src"
_SOURCES = ("cpuGridSample.cpp", "gridSampleMath.h", "gridSampleHwc8.h", "cpuGridSampleFast.h",
            "cpuThreadPool.h")
_ABI_VERSION = 2
# -ffp-contract=off: no FMA contraction, so the host rounds like the kernels' explicit code.
# -O3 -march=native: the production loops vectorise for this CPU (the cache key includes it).
# -fno-trapping-math lets rintf vectorise; no value changes (no -ffast-math).
_FLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math",
          "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra")
# The production kernels' source argument (src/gridSampleMath.h, enum Source).
SOURCES = {"grid": 0, "affine": 1, "projective": 2}
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_FUNCS = tuple(f"stn_{op}_f32" for op in ("grid_sample", "affine_grid_sample",
                                           "projective_grid_sample"))
_FUNCS += tuple(f.replace("_f32", "_hwc8_f32") for f in _FUNCS)


def cpu_cache_dir() -> Path:
    """Where compiled CPU libraries are kept ($STN_DEPLOY_CACHE or ~/.cache/stn-deploy)."""
    root = os.environ.get("STN_DEPLOY_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "stn-deploy"


def _cpu_identity() -> bytes:
    """What -march=native depends on: the CPU's model and feature flags (a shared cache dir on
    another CPU must not hand out a library built for this one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.machine().encode()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep))).encode()


def _source_hash() -> str:
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(" ".join(_FLAGS).encode())
    digest.update(_cpu_identity())
    return digest.hexdigest()[:16]


def default_threads() -> int:
    """Threads the kernels use when not told: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _compiler() -> str:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise PluginBuildError(
        "no C++ compiler found for the CPU build of the GridSample kernels (tried $CXX, g++, c++, "
        "clang++); install one, e.g. `apt-get install g++`"
    )


def _tuning_flags(cxx: str) -> list[str]:
    """GCC on AMD x86: no hardware gathers (microcoded on Zen; the vectoriser's element-wise
    loads ran the 32x3x64x64 bilinear sampling 1.3-1.8x faster here, same values)."""
    if "clang" in Path(cxx).name:
        return []
    try:
        amd = "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return ["-mtune-ctrl=^use_gather"] if amd else []


def library_path() -> Path:
    """Path of the CPU library for the current sources, compiling it if it is not there yet."""
    target = cpu_cache_dir() / f"libstn_gridsample_cpu-{_source_hash()}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cxx = _compiler()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cxx, *_FLAGS, *_tuning_flags(cxx), "-o", str(out),
               str(SOURCE_DIR / "cpuGridSample.cpp")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PluginBuildError(
                f"compiling the CPU GridSample library failed ({' '.join(cmd)}):\n{proc.stderr}"
            )
        os.replace(out, target)  # atomic: concurrent processes never see a half-written file
    return target


def load() -> ctypes.CDLL:
    """The loaded CPU library (built on first use), with argument types declared."""
    global _LIB
    with _LOCK:
        if _LIB is None:
            path = library_path()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise PluginLoadError(
                    f"could not load {path}: {exc}; delete it to rebuild"
                ) from exc
            if lib.stn_cpu_abi_version() != _ABI_VERSION:
                raise PluginLoadError(f"{path} has C ABI {lib.stn_cpu_abi_version()}, "
                                      f"expected {_ABI_VERSION}; delete it to rebuild")
            ptr = ctypes.c_void_p
            i32 = ctypes.c_int32
            for name in _FUNCS:
                fn = getattr(lib, name)
                fn.restype = i32
                fn.argtypes = [ptr, ptr, ptr, ctypes.c_int64, *([i32] * 8)]
            fast = lib.stn_cpu_sample_f32
            fast.restype = i32
            fast.argtypes = [i32, ptr, ptr, ptr, ctypes.c_int64, *([i32] * 9)]
            _LIB = lib
        return _LIB


def _as_float32(name: str, a: np.ndarray, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float16):
        raise ValueError(f"{name} must be float32 or float16, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def to_hwc8(x: np.ndarray) -> np.ndarray:
    """NCHW -> TensorRT's kHWC8 layout [N, H, W, round_up(C, 8)], padding channels zero."""
    n, c, h, w = x.shape
    out = np.zeros((n, h, w, -(-c // 8) * 8), dtype=x.dtype)
    out[..., :c] = x.transpose(0, 2, 3, 1)
    return out


def from_hwc8(y: np.ndarray, channels: int) -> np.ndarray:
    """kHWC8 [N, H, W, Cp] -> NCHW with the first ``channels`` channels."""
    return np.ascontiguousarray(y[..., :channels].transpose(0, 3, 1, 2))


def sample_into(source: int, x: np.ndarray, coords: np.ndarray, y: np.ndarray, mode: int,
                padding: int, align_corners: int, threads: int) -> None:
    """The production kernel on arrays the caller has checked: C-contiguous float32 ``x``
    [N,C,H,W], ``coords`` of the source's shape, ``y`` [N,C,Ho,Wo] written in place.

    The thin call the ONNX Runtime route makes per plugin node (no copies, no shape checks
    beyond the library's own argument checks).
    """
    n, c, h, w = x.shape
    status = load().stn_cpu_sample_f32(
        source, x.ctypes.data, coords.ctypes.data, y.ctypes.data, n, c, h, w, y.shape[2],
        y.shape[3], mode, padding, align_corners, threads,
    )
    if status != 0:
        raise ValueError(
            f"stn_cpu_sample_f32 rejected its arguments (status {status}): x {x.shape}, "
            f"coordinates {coords.shape}, y {y.shape}, mode {mode}, padding {padding}"
        )


def _call(source: str, x, coords, coord_shape, out_hw, mode, padding_mode, align_corners,
          layout: str = "nchw", kernel: str = "fast", threads: int | None = None):
    xf = _as_float32("x", x, 4)
    cf = _as_float32("coordinates", coords, len(coord_shape))
    n, c, h, w = xf.shape
    expected = tuple(n if d == "N" else d for d in coord_shape)
    if cf.shape != expected:
        raise ValueError(f"coordinates must have shape {expected} for x {xf.shape}, got {cf.shape}")
    oh, ow = (int(out_hw[0]), int(out_hw[1]))
    if h <= 0 or w <= 0 or oh < 0 or ow < 0:
        raise ValueError(f"bad sizes: input {xf.shape}, output {(oh, ow)}")
    if layout not in ("nchw", "hwc8"):
        raise ValueError(f"layout {layout!r} is not 'nchw' or 'hwc8'")
    if kernel not in ("fast", "reference"):
        raise ValueError(f"kernel {kernel!r} is not 'fast' or 'reference'")
    if kernel == "fast" and layout == "nchw":
        y = np.empty((n, c, oh, ow), dtype=np.float32)
        sample_into(SOURCES[source], xf, cf, y, mode_int(mode), padding_int(padding_mode),
                    int(bool(align_corners)), threads or default_threads())
        return y.astype(np.float16) if np.asarray(x).dtype == np.float16 else y
    func = {"grid": "stn_grid_sample_f32", "affine": "stn_affine_grid_sample_f32",
            "projective": "stn_projective_grid_sample_f32"}[source]
    if layout == "hwc8":  # exercise the channels-last kernels' code path on packed tensors
        xf = to_hwc8(xf)
        func = func.replace("_f32", "_hwc8_f32")
        y = np.full((n, oh, ow, xf.shape[-1]), np.nan, dtype=np.float32)
    else:
        y = np.empty((n, c, oh, ow), dtype=np.float32)
    status = getattr(load(), func)(
        xf.ctypes.data, cf.ctypes.data, y.ctypes.data, n, c, h, w, oh, ow,
        mode_int(mode), padding_int(padding_mode), int(bool(align_corners)),
    )
    if status != 0:
        raise ValueError(f"{func} rejected its arguments (status {status})")
    if layout == "hwc8":
        if (y[..., c:] != 0).any():
            raise ValueError(f"{func} left non-zero padding channels")
        y = from_hwc8(y, c)
    return y.astype(np.float16) if np.asarray(x).dtype == np.float16 else y


_KERNEL_DOC = """
    ``kernel="fast"`` (default) runs the production kernels on ``threads`` threads (default:
    every core this process may use); ``kernel="reference"`` the one-pixel-at-a-time reference.
    ``layout="hwc8"`` runs the reference's channels-last (kHWC8) code path on a packed copy."""


def grid_sample(x: np.ndarray, grid: np.ndarray, mode: str | int = "bilinear",
                padding_mode: str | int = "zeros", align_corners: bool = False,
                layout: str = "nchw", *, kernel: str = "fast",
                threads: int | None = None) -> np.ndarray:
    """F.grid_sample on numpy: x [N,C,H,W], grid [N,Ho,Wo,2] -> [N,C,Ho,Wo]."""
    g = np.asarray(grid)
    if g.ndim != 4 or g.shape[-1] != 2:
        raise ValueError(f"grid must be [N, Ho, Wo, 2], got shape {g.shape}")
    shape = ("N", g.shape[1], g.shape[2], 2)
    return _call("grid", x, g, shape, g.shape[1:3], mode, padding_mode, align_corners, layout,
                 kernel, threads)


def affine_grid_sample(x: np.ndarray, theta: np.ndarray, out_hw: tuple[int, int],
                       mode: str | int = "bilinear", padding_mode: str | int = "zeros",
                       align_corners: bool = False, layout: str = "nchw", *,
                       kernel: str = "fast", threads: int | None = None) -> np.ndarray:
    """grid_sample(x, affine_grid(theta [N,2,3], out_hw)) without materialising the grid."""
    return _call("affine", x, theta, ("N", 2, 3), out_hw, mode, padding_mode, align_corners,
                 layout, kernel, threads)


def projective_grid_sample(x: np.ndarray, h: np.ndarray, out_hw: tuple[int, int],
                           mode: str | int = "bilinear", padding_mode: str | int = "zeros",
                           align_corners: bool = False, layout: str = "nchw", *,
                           kernel: str = "fast", threads: int | None = None) -> np.ndarray:
    """grid_sample at the source points (x, y)/z of homographies h [N,3,3] over the base grid."""
    return _call("projective", x, h, ("N", 3, 3), out_hw, mode, padding_mode, align_corners,
                 layout, kernel, threads)


for _f in (grid_sample, affine_grid_sample, projective_grid_sample):
    _f.__doc__ += _KERNEL_DOC
