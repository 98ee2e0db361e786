"""Grid generation and sampling: the one place every STN warps an image.

Every model in the zoo warps through a :class:`Warp` module defined here, and every ``Warp``
ends in :func:`grid_sample` with ``F.grid_sample`` semantics. This is the seam the exporter
and the plugins hook into: the standard ONNX flavour exports these modules as they are, the
plugin flavour swaps each ``Warp`` for a node of our TensorRT plugin (fused for affine and
projective transforms, ``STNGridSample`` for the rest).

Coordinates are normalised to [-1, 1] exactly as ``F.affine_grid`` does: with
``align_corners=False`` the extreme values refer to pixel edges, with ``True`` to pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "INTERPOLATION_MODES",
    "PADDING_MODES",
    "SamplerConfig",
    "base_grid",
    "affine_grid",
    "projective_grid",
    "tps_kernel",
    "grid_sample",
    "Warp",
    "AffineWarp",
    "AttentionWarp",
    "ProjectiveWarp",
    "TPSWarp",
    "WARPS",
]

# PyTorch's grid_sampler enums; the plugin attributes use the same integers.
INTERPOLATION_MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
PADDING_MODES = {"zeros": 0, "border": 1, "reflection": 2}


@dataclass(frozen=True)
class SamplerConfig:
    """How a warped image is read from its input: F.grid_sample's three knobs."""

    mode: str = "bilinear"
    padding_mode: str = "zeros"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.mode not in INTERPOLATION_MODES:
            raise ValueError(
                f"interpolation mode {self.mode!r} is not one of {sorted(INTERPOLATION_MODES)}; "
                "e.g. SamplerConfig(mode='bilinear')"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding mode {self.padding_mode!r} is not one of {sorted(PADDING_MODES)}; "
                "e.g. SamplerConfig(padding_mode='zeros')"
            )
        if not isinstance(self.align_corners, bool):
            raise ValueError(f"align_corners must be a bool, got {self.align_corners!r}")


def _linspace(n: int, align_corners: bool, dtype: torch.dtype) -> Tensor:
    steps = torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1)
    if not align_corners:
        steps = steps * (n - 1) / n
    return steps.to(dtype)


def base_grid(height: int, width: int, align_corners: bool, dtype=torch.float32) -> Tensor:
    """Homogeneous target coordinates [H*W, 3] as (x, y, 1), row-major like F.affine_grid."""
    ys = _linspace(height, align_corners, torch.float64)
    xs = _linspace(width, align_corners, torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ones = torch.ones_like(gx)
    return torch.stack([gx, gy, ones], dim=-1).reshape(height * width, 3).to(dtype)


def affine_grid(theta: Tensor, out_hw: tuple[int, int], align_corners: bool) -> Tensor:
    """Sampling grid [N, Ho, Wo, 2] for 2x3 matrices theta [N, 2, 3] (F.affine_grid)."""
    n = theta.shape[0]
    return F.affine_grid(theta, [n, 1, out_hw[0], out_hw[1]], align_corners=align_corners)


def projective_grid(homography: Tensor, base: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Sampling grid [N, Ho, Wo, 2] for 3x3 homographies [N, 3, 3] over a base grid [Ho*Wo, 3].

    The source point is (x, y) / z with (x, y, z) = H (x_t, y_t, 1). A z of exactly zero gives
    infinite coordinates, which grid_sample (and our kernels) treat as out of range.
    """
    points = torch.matmul(base, homography.transpose(1, 2))  # [N, HW, 3]
    grid = points[..., :2] / points[..., 2:3]
    return grid.reshape(homography.shape[0], out_hw[0], out_hw[1], 2)


def tps_kernel(control: Tensor, base: Tensor) -> Tensor:
    """Constant matrix M [HW, K] such that grid = M @ source_control_points for a TPS warp.

    ``control`` [K, 2] holds the fixed target control points; ``base`` [HW, 3] the target pixels.
    Solving the thin-plate-spline system once and folding it into M makes the whole grid
    generator a single matrix product at run time (and a single MatMul in ONNX).
    """
    k = control.shape[0]
    c = control.to(torch.float64)
    b = base.to(torch.float64)

    def radial(d2: Tensor) -> Tensor:  # U(r) = r^2 log r^2, with U(0) = 0
        return torch.where(d2 > 0, d2 * torch.log(d2.clamp_min(1e-30)), torch.zeros_like(d2))

    ctrl_h = torch.cat([torch.ones(k, 1, dtype=torch.float64), c], dim=1)  # [K, 3]
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    system[:k, :k] = radial(torch.cdist(c, c).pow(2))
    system[:k, k:] = ctrl_h
    system[k:, :k] = ctrl_h.T
    inverse = torch.linalg.inv(system)[:, :k]  # only the point rows of the right-hand side
    pix = b[:, :2]
    rows = torch.cat(
        [radial(torch.cdist(pix, c).pow(2)), torch.ones(pix.shape[0], 1, dtype=torch.float64), pix],
        dim=1,
    )  # [HW, K+3]
    return (rows @ inverse).to(torch.float32)


def grid_sample(x: Tensor, grid: Tensor, config: SamplerConfig) -> Tensor:
    """Read x [N, C, H, W] at grid [N, Ho, Wo, 2]: F.grid_sample with the config's modes."""
    return F.grid_sample(
        x,
        grid,
        mode=config.mode,
        padding_mode=config.padding_mode,
        align_corners=config.align_corners,
    )


class Warp(nn.Module):
    """Grid generator + sampler for one transform family.

    ``forward(x, params)`` takes the localisation net's raw output [N, num_params] and returns
    ``(warped [N, C, Ho, Wo], theta)``, where theta is the transform in its natural shape
    (2x3 affine, 3x3 homography, or K source control points). ``identity_params()`` is the bias
    the localisation net's last layer starts from, so training starts at the identity transform.
    """

    kind: str = ""
    num_params: int = 0

    def __init__(self, out_hw: tuple[int, int], config: SamplerConfig | None = None) -> None:
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.config = config or SamplerConfig()

    def to_theta(self, params: Tensor) -> Tensor:
        raise NotImplementedError

    def grid(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def identity_params(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        theta = self.to_theta(params)
        return grid_sample(x, self.grid(theta), self.config), theta

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"out_hw={self.out_hw}, mode={c.mode}, padding={c.padding_mode}, "
            f"align_corners={c.align_corners}"
        )


class AffineWarp(Warp):
    """Full affine transform: 6 parameters, theta [N, 2, 3]."""

    kind = "affine"
    num_params = 6

    def to_theta(self, params: Tensor) -> Tensor:
        return params.reshape(-1, 2, 3)

    def grid(self, theta: Tensor) -> Tensor:
        return affine_grid(theta, self.out_hw, self.config.align_corners)

    def identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


class AttentionWarp(AffineWarp):
    """The paper's attention transform: isotropic scale + translation (s, tx, ty)."""

    kind = "attention"
    num_params = 3

    def to_theta(self, params: Tensor) -> Tensor:
        s, tx, ty = params[:, 0], params[:, 1], params[:, 2]
        zero = torch.zeros_like(s)
        return torch.stack([s, zero, tx, zero, s, ty], dim=1).reshape(-1, 2, 3)

    def identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0])


class ProjectiveWarp(Warp):
    """Plane projective transform: 8 parameters, theta [N, 3, 3] with h33 = 1."""

    kind = "projective"
    num_params = 8

    def __init__(self, out_hw: tuple[int, int], config: SamplerConfig | None = None) -> None:
        super().__init__(out_hw, config)
        base = base_grid(*self.out_hw, align_corners=self.config.align_corners)
        self.register_buffer("base", base, persistent=False)

    def to_theta(self, params: Tensor) -> Tensor:
        ones = torch.ones_like(params[:, :1])
        return torch.cat([params, ones], dim=1).reshape(-1, 3, 3)

    def grid(self, theta: Tensor) -> Tensor:
        return projective_grid(theta, self.base, self.out_hw)

    def identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


class TPSWarp(Warp):
    """Thin-plate spline over a fixed ``grid_size`` lattice of target control points.

    The localisation net predicts the K source control points (x, y in [-1, 1]); theta is
    [N, K, 2]. Identity means the source points equal the target lattice.
    """

    kind = "tps"

    def __init__(
        self,
        out_hw: tuple[int, int],
        config: SamplerConfig | None = None,
        grid_size: tuple[int, int] = (4, 4),
        span: float = 0.9,
    ) -> None:
        super().__init__(out_hw, config)
        gy, gx = torch.meshgrid(
            torch.linspace(-span, span, grid_size[0]),
            torch.linspace(-span, span, grid_size[1]),
            indexing="ij",
        )
        control = torch.stack([gx, gy], dim=-1).reshape(-1, 2)
        self.grid_size = tuple(grid_size)
        self.num_params = 2 * control.shape[0]
        self.register_buffer("control", control, persistent=False)
        base = base_grid(*self.out_hw, align_corners=self.config.align_corners)
        self.register_buffer("kernel", tps_kernel(control, base), persistent=False)

    def to_theta(self, params: Tensor) -> Tensor:
        return params.reshape(params.shape[0], -1, 2)

    def grid(self, theta: Tensor) -> Tensor:
        return torch.matmul(self.kernel, theta).reshape(theta.shape[0], *self.out_hw, 2)

    def identity_params(self) -> Tensor:
        return self.control.reshape(-1).clone()


WARPS: dict[str, type[Warp]] = {
    "affine": AffineWarp,
    "attention": AttentionWarp,
    "projective": ProjectiveWarp,
    "tps": TPSWarp,
}


def rotation_theta(angle_deg: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """2x3 matrices rotating by ``angle_deg`` (used by data distortion and tests)."""
    a = angle_deg * (math.pi / 180.0)
    c, s = torch.cos(a) * scale, torch.sin(a) * scale
    zero = torch.zeros_like(c)
    return torch.stack([c, -s, zero, s, c, zero], dim=-1).reshape(-1, 2, 3)
