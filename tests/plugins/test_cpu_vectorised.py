"""The production CPU kernels' inner loops vectorise: GCC's own report says so.

Every loop tagged ``STN_VECTORISED`` in src/cpuGridSampleFast.h must appear in
``-fopt-info-vec-optimized`` when the library is compiled with the flags the CPU build uses.
A change that makes one of them scalar (an aliasing pointer, a runtime branch, a libm call the
vectoriser does not know) fails here instead of showing up as a slower benchmark.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stn_deploy.plugins import cpu


def _gcc() -> str | None:
    try:
        cxx = cpu._compiler()
    except Exception:  # noqa: BLE001 - no compiler: the skip says so
        return None
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cxx if "clang" not in out and ("g++" in out or "GCC" in out) else None


@pytest.mark.skipif(_gcc() is None, reason="the vectorisation report checked here is GCC's")
def test_tagged_loops_are_vectorised(tmp_path):
    cxx = _gcc()
    source = cpu.SOURCE_DIR / "cpuGridSampleFast.h"
    tagged = {i + 1: line.split("STN_VECTORISED:")[1].strip()
              for i, line in enumerate(source.read_text().splitlines())
              if "STN_VECTORISED:" in line}
    assert len(tagged) >= 6
    cmd = [cxx, *cpu._FLAGS, *cpu._tuning_flags(shutil.which(cxx) or cxx),
           "-fopt-info-vec-optimized", "-o", str(tmp_path / "lib.so"),
           str(cpu.SOURCE_DIR / "cpuGridSample.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vectorised = {int(m.group(1)) for m in
                  re.finditer(r"cpuGridSampleFast\.h:(\d+):\d+: optimized: loop vectorized",
                              proc.stderr)}
    missing = {line: what for line, what in tagged.items() if line not in vectorised}
    assert not missing, f"loops not vectorised: {missing}"


def test_library_flags_target_this_cpu():
    # -march=native is what lets the loops use the host's vector width; the cache key includes
    # the CPU so a shared cache never hands this build to another CPU.
    assert "-march=native" in cpu._FLAGS and "-ffp-contract=off" in cpu._FLAGS
    assert cpu._cpu_identity()
    assert Path(cpu.library_path()).is_file()
