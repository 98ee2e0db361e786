"""One launch of each feature-map-sized kernel, for Nsight Compute (GPU machines only).

    ncu --clock-control none --profile-from-start off --set full -o OUT/profile \\
        python bench/gpu_profile.py

Builds the extension as bench/gpu_check.py does, warms up, then profiles exactly one call each
of the fused affine kernel on N=32, C=64, 128x128 in kHWC8 fp16, NCHW fp16 and NCHW fp32
(the cases bench/gpu_check.py reports against the copy ceiling).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from gpu_backend import ROOT, Backend, build_extension, to_hwc8


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    ext = build_extension(ROOT / "build" / "gpu_check_ext", None, False)
    backend = Backend("cuda-extension", torch.device("cuda"), ext)
    n, c, h, w = 32, 64, 128, 128
    gen = torch.Generator().manual_seed(0)
    theta = (torch.tensor([[1.0, 0.1, 0.05], [-0.1, 0.9, 0.0]]).repeat(n, 1, 1)
             + 0.05 * torch.randn(n, 2, 3, generator=gen)).cuda()
    x32 = torch.rand(n, c, h, w, generator=gen).cuda()
    x16 = x32.half()
    xp = to_hwc8(x16)
    calls = {
        "hwc8 fp16": lambda: backend.hwc8("affine", xp, theta, c, (h, w), "bilinear", "zeros",
                                          False),
        "nchw fp16": lambda: backend.affine(x16, theta, (h, w), "bilinear", "zeros", False),
        "nchw fp32": lambda: backend.affine(x32, theta, (h, w), "bilinear", "zeros", False),
    }
    for fn in calls.values():
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, fn in calls.items():
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(calls), "from", Path(__file__).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
