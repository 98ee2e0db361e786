"""nvcc compiles every GridSample kernel for each target architecture without local memory.

One nvcc call builds all architectures (CI has 2 cores); ptxas's resource report (-Xptxas -v)
must show 0 bytes of stack frame and no spill stores/loads for every kernel on every arch.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from stn_deploy.plugins.cpu import SOURCE_DIR

ARCHS = ("75", "80", "86", "89", "90")
# 3 sources (grid, affine, projective) x 3 modes x (3 NCHW dtype pairs + 2 kHWC8 fp16 ones).
KERNELS_PER_ARCH = 45

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(report: str) -> dict[tuple[str, str], dict[str, int]]:
    """Per (kernel, arch): registers, stack frame and spill bytes from ptxas -v output."""
    usage: dict[tuple[str, str], dict[str, int]] = {}
    current = None
    for line in report.splitlines():
        if m := ENTRY.search(line):
            current = (m.group(1), m.group(2))
            usage[current] = {}
        elif current and (m := FRAME.search(line)):
            usage[current].update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current and (m := REGS.search(line)):
            usage[current]["registers"] = int(m[1])
    return usage


@pytest.mark.slow
def test_kernels_compile_for_every_arch_without_spills(tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = ["nvcc", "-std=c++17", "-O3", "-Xptxas", "-v", *gencode, "-c",
           str(SOURCE_DIR / "gridSampleKernel.cu"), "-o", str(tmp_path / "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    usage = parse_ptxas(proc.stderr + proc.stdout)
    for arch in ARCHS:
        kernels = {k: v for (k, a), v in usage.items() if a == f"sm_{arch}"}
        assert len(kernels) == KERNELS_PER_ARCH, f"sm_{arch}: {sorted(kernels)}"
        for name, u in kernels.items():
            spills = (u["stack"], u["spill_stores"], u["spill_loads"])
            assert spills == (0, 0, 0), (arch, name, u)
            assert 0 < u["registers"] <= 128, (arch, name, u)


def test_parse_ptxas_report():
    report = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]\n"
    )
    assert parse_ptxas(report) == {
        ("_Z3fooPf", "sm_80"): {"stack": 8, "spill_stores": 4, "spill_loads": 4, "registers": 40}
    }
