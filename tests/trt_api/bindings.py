"""The real TensorRT Python bindings on a CPU machine: install, stand-in libraries, API dump.

``tensorrt-cu12-bindings`` (10.x) and ``tensorrt-cu13-bindings`` (11.x) are small wheels on
PyPI with the real pybind module ``tensorrt_bindings`` and no libraries. Both install the same
module name, so each goes into its own folder (``pip install --target``), cached. Their
extension links ~10 C entry points of libnvinfer / libnvonnxparser / libnvinfer_plugin; a
stand-in built with gcc under those sonames (standin.c) lets it import, and introspect.py then
dumps the API in a subprocess. TensorRT-RTX is the real thing (``tensorrt_rtx``, a dev
dependency) and is dumped the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINDINGS = {
    "10": "tensorrt-cu12-bindings==10.16.1.11",
    "11": "tensorrt-cu13-bindings==11.4.0.106",
}
SONAMES = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")


class Unavailable(Exception):
    """The bindings could not be installed or imported here (the reason is the message)."""


def _stamp(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    for name in ("introspect.py", "standin.c"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def install(cache: Path, major: str) -> Path:
    """``pip install --target`` of the bindings wheel (once per cache folder)."""
    spec = BINDINGS[major]
    target = cache / f"bindings-{spec.replace('==', '-')}"
    if (target / "tensorrt_bindings" / "__init__.py").is_file():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(tmp), spec]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise Unavailable(f"pip could not install {spec}: {done.stderr.strip()[-800:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def needed_sonames(target: Path) -> list[str]:
    """The libnvinfer* sonames the extension module links (readelf -d)."""
    ext = next((target / "tensorrt_bindings").glob("tensorrt*.so"))
    out = subprocess.run(["readelf", "-d", str(ext)], capture_output=True, text=True).stdout
    return sorted(set(re.findall(r"\[(libnv\w+\.so\.\d+)\]", out)))


def undefined_entry_points(target: Path) -> list[str]:
    """The C symbols of TensorRT the extension needs (nm -D --undefined-only)."""
    ext = next((target / "tensorrt_bindings").glob("tensorrt*.so"))
    out = subprocess.run(["nm", "-D", "--undefined-only", str(ext)], capture_output=True,
                         text=True).stdout  # fmt: skip
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if re.match(r"(create|get|init)\w*", n) and "@" not in n)


def standin(cache: Path, major: str, sonames: list[str], version: int) -> Path:
    """A folder with the stand-in library under every soname in ``sonames``."""
    folder = cache / f"standin-{major}-{_stamp(*sonames, str(version))}"
    if all((folder / s).is_file() for s in sonames):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for soname in sonames:
        cmd = ["gcc", "-shared", "-fPIC", f"-DSTANDIN_VERSION={version}", f"-Wl,-soname,{soname}",
               str(HERE / "standin.c"), "-o", str(folder / soname)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return folder


def dump(module: str, *, path: Path | None = None, libs: Path | None = None,
         cache_file: Path | None = None) -> dict:  # fmt: skip
    """The API of ``module`` as introspect.py writes it, from a fresh interpreter."""
    if cache_file is not None and cache_file.is_file():
        return json.loads(cache_file.read_text())
    env = dict(os.environ, STN_INTROSPECT_CALL="0" if libs is not None else "1")
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    if libs is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    done = subprocess.run([sys.executable, str(HERE / "introspect.py"), module],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"import {module} failed: {done.stderr.strip()[-1500:]}")
    data = json.loads(done.stdout)
    if cache_file is not None:
        cache_file.write_text(done.stdout)
    return data


def real_api(cache: Path, target: str) -> dict:
    """The dump of TensorRT 10.16 ("10"), 11.4 ("11") or TensorRT-RTX ("rtx")."""
    if target == "rtx":
        import importlib.util

        if importlib.util.find_spec("tensorrt_rtx") is None:
            raise Unavailable("tensorrt_rtx is not installed (pip install -e '.[dev]')")
        import tensorrt_rtx

        key = _stamp("rtx", tensorrt_rtx.__version__)
        return dump("tensorrt_rtx", cache_file=cache / f"api-rtx-{key}.json")
    installed = install(cache, target)
    version = BINDINGS[target].split("==")[1]
    major, minor, patch = (int(v) for v in version.split(".")[:3])
    sonames = needed_sonames(installed)
    libs = standin(cache, target, sonames, major * 10000 + minor * 100 + patch)
    key = _stamp(target, version, *sonames)
    return dump("tensorrt_bindings", path=installed, libs=libs,
                cache_file=cache / f"api-{target}-{key}.json")
