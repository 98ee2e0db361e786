"""Our GridSample kernels swapped into PyTorch models we did not write, for bench/gpu_models.py.

Two ways in, neither touching the model's code:

- :func:`swap_warps` for the zoo: every :class:`~stn_deploy.models.sampling.Warp` module of a
  copy of the model is wrapped so that affine and attention warps call the fused affine kernel
  and projective warps the fused projective kernel (no grid is ever built), and any other warp
  (TPS) builds its grid as before and calls the generic kernel.
- :class:`OurSampling` for any module: a TorchFunctionMode that takes over ``F.grid_sample``
  (generic kernel) and, when the grid is the result of an ``F.affine_grid`` call with the same
  ``align_corners`` and neither it nor theta changed in place since, the fused affine kernel
  with that call's theta. The affine grid is still computed (one small kernel), because the
  module may use it elsewhere. Grids built any other way (matmul, bmm, a homography's divide)
  reach the generic kernel: recognising them needs a graph rewrite, the exporter's job.

Calls the kernels cannot take (5-D inputs, other dtypes, another device) run PyTorch's own
function and are counted as such, so a table can show that "ours" really ran ours.
"""

from __future__ import annotations

import copy
import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from gpu_backend import Backend
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from stn_deploy.models.sampling import AffineWarp, ProjectiveWarp, Warp

# (input dtype, coordinate dtype) pairs the kernels are instantiated for
_DTYPES = {(torch.float32, torch.float32), (torch.float16, torch.float16),
           (torch.float16, torch.float32)}


class OurKernels:
    """The kernels behind F.grid_sample's arguments; ``calls`` counts which kernel ran."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls: Counter[str] = Counter()

    def why_not(self, x: Tensor, coords: Tensor) -> str | None:
        """None when the kernels take (x, coords); else the reason PyTorch has to run it."""
        if x.dim() != 4:
            return f"{x.dim()}-D input (the kernels take NCHW)"
        if x.device != self.backend.device or coords.device != self.backend.device:
            return f"tensors on {x.device}, kernels on {self.backend.device}"
        if (x.dtype, coords.dtype) not in _DTYPES:
            return f"dtypes {x.dtype} / {coords.dtype}"
        return None

    def grid_sample(self, x: Tensor, grid: Tensor, mode: str, padding: str, ac: bool) -> Tensor:
        self.calls["generic"] += 1
        return self.backend.grid_sample(x, grid, mode, padding, ac)

    def affine(self, x: Tensor, theta: Tensor, out_hw, mode: str, padding: str,
               ac: bool) -> Tensor:
        self.calls["fused_affine"] += 1
        return self.backend.affine(x, theta, tuple(out_hw), mode, padding, ac)

    def projective(self, x: Tensor, h: Tensor, out_hw, mode: str, padding: str,
                   ac: bool) -> Tensor:
        self.calls["fused_projective"] += 1
        return self.backend.projective(x, h, tuple(out_hw), mode, padding, ac)

    def per_forward(self, forward) -> dict[str, int]:
        """Which kernels one call of ``forward()`` runs."""
        self.calls.clear()
        forward()
        out = dict(self.calls)
        self.calls.clear()
        return out


class OursWarp(nn.Module):
    """A zoo Warp whose sampling runs on our kernels; same inputs and outputs as the Warp."""

    def __init__(self, warp: Warp, kernels: OurKernels) -> None:
        super().__init__()
        self.warp = warp
        self.kernels = kernels

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        w, k = self.warp, self.kernels
        theta = w.to_theta(params)
        c = w.config
        modes = (c.mode, c.padding_mode, c.align_corners)
        if k.why_not(x, theta) is not None:
            k.calls["torch"] += 1
            return w(x, params)
        if isinstance(w, AffineWarp):  # AttentionWarp too: its theta is a 2x3 matrix
            return k.affine(x, theta, w.out_hw, *modes), theta
        if isinstance(w, ProjectiveWarp):
            return k.projective(x, theta, w.out_hw, *modes), theta
        return k.grid_sample(x, w.grid(theta), *modes), theta


def swap_warps(model: nn.Module, kernels: OurKernels) -> tuple[nn.Module, int]:
    """(a copy of ``model`` with each Warp wrapped in :class:`OursWarp`, how many were)."""
    model = copy.deepcopy(model)
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Warp):
                parent._modules[name] = OursWarp(child, kernels)  # ModuleList/Sequential too
                swapped += 1
    return model, swapped


def _grid_sample_args(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
    return input, grid, mode, padding_mode, bool(align_corners)  # None means False (F's rule)


def _affine_grid_args(theta, size, align_corners=None):
    return theta, tuple(size), bool(align_corners)


def _versions(*tensors: Tensor) -> tuple | None:
    """In-place edit counters; None for inference-mode tensors, which keep none (no fusing)."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


class OurSampling(TorchFunctionMode):
    """``with OurSampling(kernels): module(x)`` runs the module's grid sampling on our kernels."""

    def __init__(self, kernels: OurKernels) -> None:
        super().__init__()
        self.kernels = kernels
        # id(grid) -> (weakref to the grid, theta, size, align_corners, versions of both)
        self._affine: dict[int, tuple] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.affine_grid:
            grid = func(*args, **kwargs)
            theta, size, ac = _affine_grid_args(*args, **kwargs)
            key = id(grid)
            ref = weakref.ref(grid, lambda _, key=key: self._affine.pop(key, None))
            self._affine[key] = (ref, theta, size, ac, _versions(grid, theta))
            return grid
        if func is F.grid_sample:
            return self._grid_sample(func, args, kwargs)
        return func(*args, **kwargs)

    def _grid_sample(self, func, args, kwargs) -> Tensor:
        x, grid, mode, padding, ac = _grid_sample_args(*args, **kwargs)
        k = self.kernels
        if k.why_not(x, grid) is not None:
            k.calls["torch"] += 1
            return func(*args, **kwargs)
        ref, theta, size, grid_ac, versions = self._affine.get(id(grid), (None,) * 5)
        if (ref is not None and ref() is grid and versions is not None
                and versions == _versions(grid, theta) and grid_ac == ac and len(size) == 4
                and theta.shape == (x.shape[0], 2, 3) and k.why_not(x, theta) is None):
            return k.affine(x, theta, size[2:], mode, padding, ac)
        return k.grid_sample(x, grid, mode, padding, ac)
