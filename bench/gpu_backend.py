"""The GridSample kernels as bench/gpu_check.py drives them: CUDA extension or CPU build.

The CUDA side is gridSampleKernel.cu + torchExtension.cpp compiled with
torch.utils.cpp_extension (the same kernels TensorRT runs); in ``--dry-run`` the CPU build of
the same sampling code stands in for it, so the script's logic runs without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "plugins" / "src"
ENUM_MODE = {"bilinear": 0, "nearest": 1, "bicubic": 2}
ENUM_PAD = {"zeros": 0, "border": 1, "reflection": 2}


@dataclass
class Backend:
    """The kernels under test: the CUDA extension, or the CPU build in --dry-run."""

    name: str
    device: torch.device
    ext: object = None

    def poison(self, on: bool) -> None:
        """NaN-fill outputs before each launch (CUDA only: the CPU build writes fresh arrays)."""
        if self.ext is not None:
            self.ext.set_poison(on)

    def _stream(self) -> int:
        return torch.cuda.current_stream().cuda_stream

    def grid_sample(self, x, grid, mode, padding, ac):
        if self.ext is not None:
            return self.ext.grid_sample(x, grid, ENUM_MODE[mode], ENUM_PAD[padding], ac,
                                        self._stream())
        from stn_deploy.plugins import cpu

        y = cpu.grid_sample(x.numpy(), grid.numpy(), mode, padding, ac)
        return torch.from_numpy(y)

    def affine(self, x, theta, out_hw, mode, padding, ac):
        if self.ext is not None:
            return self.ext.affine_grid_sample(x, theta, *out_hw, ENUM_MODE[mode],
                                               ENUM_PAD[padding], ac, self._stream())
        from stn_deploy.plugins import cpu

        return torch.from_numpy(cpu.affine_grid_sample(x.numpy(), theta.numpy(), out_hw, mode,
                                                       padding, ac))

    def projective(self, x, h, out_hw, mode, padding, ac):
        if self.ext is not None:
            return self.ext.projective_grid_sample(x, h, *out_hw, ENUM_MODE[mode],
                                                   ENUM_PAD[padding], ac, self._stream())
        from stn_deploy.plugins import cpu

        return torch.from_numpy(cpu.projective_grid_sample(x.numpy(), h.numpy(), out_hw, mode,
                                                           padding, ac))

    def hwc8(self, op, xp, coords, channels, out_hw, mode, padding, ac):
        """kHWC8 variant on a packed [N, H, W, Cp] tensor; returns [N, Ho, Wo, Cp]."""
        source = {"grid": 0, "affine": 1, "projective": 2}[op]
        if self.ext is not None:
            return self.ext.hwc8(source, xp, coords, channels, *out_hw, ENUM_MODE[mode],
                                 ENUM_PAD[padding], ac, self._stream())
        from stn_deploy.plugins import cpu

        x = cpu.from_hwc8(xp.numpy(), channels)
        fn = {"grid": cpu.grid_sample, "affine": cpu.affine_grid_sample,
              "projective": cpu.projective_grid_sample}[op]
        args = (x, coords.numpy()) if op == "grid" else (x, coords.numpy(), out_hw)
        y = fn(*args, mode, padding, ac, layout="hwc8")
        return torch.from_numpy(cpu.to_hwc8(y))


def to_hwc8(x: torch.Tensor) -> torch.Tensor:
    """NCHW -> [N, H, W, round_up(C, 8)] with zero padding channels (TensorRT's kHWC8)."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, h, w, -(-c // 8) * 8)
    out[..., :c] = x.permute(0, 2, 3, 1)
    return out


def from_hwc8(y: torch.Tensor, channels: int) -> torch.Tensor:
    return y[..., :channels].permute(0, 3, 1, 2)


def build_extension(build_dir: Path, archs: str | None, verbose: bool):
    """Compile gridSampleKernel.cu + torchExtension.cpp with torch.utils.cpp_extension."""
    import os

    from torch.utils.cpp_extension import load

    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="stn_gridsample_ext",
        sources=[str(SRC / "torchExtension.cpp"), str(SRC / "gridSampleKernel.cu")],
        extra_include_paths=[str(SRC)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", "-Xptxas=-v"],
        build_directory=str(build_dir),
        verbose=verbose,
    )
