"""ONNX translations of the two STN ops for the standard flavour (torch.onnx custom table).

Registered through ``torch.onnx.export(..., custom_translation_table=...)``, so they apply to
any module that calls ``F.affine_grid`` / ``F.grid_sample``, not only the zoo:

- ``aten.affine_grid_generator`` becomes one MatMul of a constant base grid [H*W, 3] by
  theta^T. The exporter's own decomposition (broadcast Mul + ReduceSum) costs ~60% of ONNX
  Runtime's time on a small STN, and opset 20's ``AffineGrid`` node is not imported by TensorRT.
- ``aten.grid_sampler(_2d)`` becomes ``GridSample`` with the opset-16 mode names bilinear /
  nearest / bicubic, the only ones TensorRT's importer maps correctly (NVIDIA/TensorRT#4646).
  Half-precision inputs are sampled in fp32 (Cast in, GridSample, Cast out): coordinates near
  the image border need more than fp16's 11 bits, and ONNX Runtime's CPU kernel is fp32 only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

from stn_deploy.export.errors import ExportError
from stn_deploy.models.sampling import INTERPOLATION_MODES, PADDING_MODES, base_grid

__all__ = ["OPSET", "MODE_NAMES", "PADDING_NAMES", "standard_translation_table"]

OPSET = 18
# enum -> ONNX GridSample-16 attribute string (PyTorch's grid_sampler enums).
MODE_NAMES = {v: k for k, v in INTERPOLATION_MODES.items()}
PADDING_NAMES = {v: k for k, v in PADDING_MODES.items()}

_FLOAT = ir.DataType.FLOAT
_FLOAT16 = ir.DataType.FLOAT16


def _static_hw(size, what: str) -> tuple[int, int]:
    if len(size) != 4:
        raise ExportError(
            f"{what}: only 2-D (4-D tensor) grids export; got a size of rank {len(size)}. "
            "Volumetric grid_sample has no TensorRT importer."
        )
    h, w = size[2], size[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise ExportError(
            f"{what}: the output height/width must be static, got {h!r} x {w!r}; export with a "
            "fixed --input-shape (only the batch dimension is dynamic)"
        )
    return h, w


def affine_grid_matmul(theta, size, align_corners: bool = False):
    """aten::affine_grid_generator(theta [N,2,3], size, align_corners) -> grid [N,H,W,2]."""
    h, w = _static_hw(size, "affine_grid")
    base = base_grid(h, w, bool(align_corners)).numpy().astype(np.float32)
    base_const = op.Constant(value=ir.tensor(base, name=f"stn_base_grid_{h}x{w}"))
    theta32 = op.Cast(theta, to=_FLOAT) if theta.dtype != _FLOAT else theta
    points = op.MatMul(base_const, op.Transpose(theta32, perm=[0, 2, 1]))  # [N, H*W, 2]
    grid = op.Reshape(points, op.Constant(value_ints=[-1, h, w, 2]))
    return op.Cast(grid, to=theta.dtype) if theta.dtype != _FLOAT else grid


def grid_sample_16(input, grid, interpolation_mode: int, padding_mode: int, align_corners: bool):
    """aten::grid_sampler(_2d)(input, grid, mode, padding, align_corners) -> GridSample-16."""
    if interpolation_mode not in MODE_NAMES or padding_mode not in PADDING_NAMES:
        raise ExportError(
            f"grid_sample: unknown interpolation/padding enum {interpolation_mode}/{padding_mode}"
            f"; expected {MODE_NAMES} and {PADDING_NAMES}"
        )
    x = op.Cast(input, to=_FLOAT) if input.dtype != _FLOAT else input
    g = op.Cast(grid, to=_FLOAT) if grid.dtype != _FLOAT else grid
    out = op.GridSample(
        x,
        g,
        align_corners=int(bool(align_corners)),
        mode=MODE_NAMES[interpolation_mode],
        padding_mode=PADDING_NAMES[padding_mode],
    )
    return op.Cast(out, to=input.dtype) if input.dtype != _FLOAT else out


def standard_translation_table() -> dict[Callable, Callable]:
    """The custom_translation_table of the standard flavour (aten op overload -> function)."""
    aten = torch.ops.aten
    return {
        aten.affine_grid_generator.default: affine_grid_matmul,
        aten.grid_sampler.default: grid_sample_16,
        aten.grid_sampler_2d.default: grid_sample_16,
    }
