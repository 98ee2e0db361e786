"""CMake driver of the plugin library: kernels, TensorRT plugin (when headers exist), CPU build.

``build()`` configures and builds ``plugins/CMakeLists.txt`` into a build folder (default
``plugins/build``, where the engine builder looks for the plugin) and reports what was built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from stn_deploy.plugins.errors import PluginBuildError

__all__ = ["DEFAULT_ARCHS", "DEFAULT_BUILD_DIR", "PLUGIN_LIBRARY", "AUTOLOAD_LIBRARY",
           "BuildResult", "build", "tensorrt_version"]

PLUGINS_DIR = Path(__file__).resolve().parent
DEFAULT_BUILD_DIR = PLUGINS_DIR / "build"
DEFAULT_ARCHS = ("75", "80", "86", "89", "90")
PLUGIN_LIBRARY = "libstn_gridsample_plugin.so"
# Registers the plugin's creators when merely dlopen()ed (Triton's `plugins=` backend option).
AUTOLOAD_LIBRARY = "libstn_gridsample_plugin_autoload.so"
KERNELS_LIBRARY = "libstn_gridsample_kernels.a"
CPU_LIBRARY = "libstn_gridsample_cpu.so"


@dataclass(frozen=True)
class BuildResult:
    """What one build produced; ``plugin`` is None when TensorRT headers were not found."""

    build_dir: Path
    cpu_library: Path
    kernels_library: Path | None
    plugin: Path | None
    archs: tuple[str, ...]
    tensorrt_version: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    autoload: Path | None = None  # built with the plugin

    def summary(self) -> str:
        parts = [f"cpu: {self.cpu_library.name}"]
        parts.append(f"kernels: sm_{',sm_'.join(self.archs)}" if self.kernels_library
                     else "kernels: skipped (no nvcc)")
        parts.append(f"plugin: {self.plugin.name} (TensorRT {self.tensorrt_version} headers)"
                     if self.plugin else "plugin: skipped (no TensorRT headers)")
        if self.autoload:
            parts.append(f"autoload: {self.autoload.name}")
        return "; ".join(parts)


def tensorrt_version(include_dir: str | os.PathLike) -> str | None:
    """The TensorRT version of a header folder (from NvInferVersion.h), or None."""
    header = Path(include_dir) / "NvInferVersion.h"
    if not header.is_file():
        return None
    text = header.read_text(errors="replace")
    parts = [re.search(rf"#define TRT_{p}_ENTERPRISE (\d+)", text) for p in ("MAJOR", "MINOR",
                                                                            "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def _parse_archs(archs: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if archs is None:
        return DEFAULT_ARCHS
    items = archs.replace(",", ";").split(";") if isinstance(archs, str) else list(archs)
    cleaned = tuple(a.strip().removeprefix("sm_") for a in items if a.strip())
    bad = [a for a in cleaned if not re.fullmatch(r"\d{2,3}[af]?", a)]
    if bad or not cleaned:
        raise PluginBuildError(f"bad --arch value(s) {bad or archs!r}; e.g. --arch '80;86;90'")
    return cleaned


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise PluginBuildError(f"{what} failed ({' '.join(cmd)}):\n{out[-6000:]}")
    return out


def build(
    build_dir: str | os.PathLike | None = None,
    *,
    archs: str | tuple[str, ...] | None = None,
    tensorrt_root: str | os.PathLike | None = None,
    cuda: bool = True,
    jobs: int | None = None,
) -> BuildResult:
    """Configure and build the plugin library; raises PluginBuildError with the tool output."""
    arch_list = _parse_archs(archs)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError("cmake is not on the PATH: pip install cmake (or apt-get install "
                               "cmake), then run stn-deploy plugins build again")
    out = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    out.mkdir(parents=True, exist_ok=True)
    cmd = [cmake, "-S", str(PLUGINS_DIR), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(arch_list)}",
           f"-DSTN_BUILD_CUDA={'ON' if cuda else 'OFF'}"]
    nvcc = shutil.which("nvcc")
    if cuda and nvcc:
        cmd.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    root = tensorrt_root or os.environ.get("TENSORRT_ROOT")
    if root:
        cmd.append(f"-DTENSORRT_ROOT={Path(root).expanduser().resolve()}")
    configure_log = _run(cmd, "cmake configure")
    _run([cmake, "--build", str(out), "-j", str(jobs or os.cpu_count() or 2)], "cmake build")
    notes = tuple(line.removeprefix("-- ").strip() for line in configure_log.splitlines()
                  if line.startswith("-- stn: "))
    match = re.search(r"stn: TensorRT ([\d.]+) headers in (\S+)", configure_log)
    plugin = out / PLUGIN_LIBRARY
    autoload = out / AUTOLOAD_LIBRARY
    kernels = out / KERNELS_LIBRARY
    cpu = out / CPU_LIBRARY
    if not cpu.is_file():
        raise PluginBuildError(f"the build finished but {cpu} is missing; see {out}")
    return BuildResult(
        build_dir=out,
        cpu_library=cpu,
        kernels_library=kernels if kernels.is_file() and cuda and nvcc else None,
        plugin=plugin if match and plugin.is_file() else None,
        archs=arch_list,
        tensorrt_version=match.group(1) if match else None,
        notes=notes,
        autoload=autoload if match and autoload.is_file() else None,
    )
