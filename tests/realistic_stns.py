"""STNs of the kinds people deploy, written by us from their published descriptions.

None of these use stn_deploy's own modules: each builds its grid the way its family does
(constant matrices and ``bmm``, ``matmul``, ``einsum``, identity grid plus a flow field, or
kornia), so export, fp16 conversion, fusion and verification are exercised on graphs we did not
shape. Each constructor takes only JSON-able kwargs, so the CLI loads them as a user would:
``stn-deploy export --module realistic_stns:OcrTpsNet --weights w.safetensors ...``.

- :class:`OcrTpsNet` / :class:`OcrTpsRectifier`: a scene-text TPS rectifier with 20 fiducial
  points on the top and bottom edges of a 32x100 crop (Shi et al., CVPR 2016, "RARE"; the TPS
  module of Baek et al., ICCV 2019), its grid built from constant float32 matrices with ``bmm``
  and a zero block made with ``.float()`` inside forward, border padding; then a small CTC-style
  recogniser (sequence logits [N, 25, 37]).
- :class:`AsterTpsNet` / :class:`AsterRectifier`: ASTER-style (Shi et al., TPAMI 2018): the
  localiser sees a downsampled copy of a 3x64x256 input, control points in [0, 1] through a
  sigmoid, the grid clamped to [0, 1] and mapped to [-1, 1], output 32x100.
- :class:`FlowWarp`: a 2-D registration network in the style of VoxelMorph (Balakrishnan et al.,
  TMI 2019): moving and fixed image in, a dense displacement field in pixels, identity pixel grid
  plus flow normalised to [-1, 1], ``align_corners=True``; the output is the warped moving image.
- :class:`KorniaAffineStn`, :class:`KorniaPerspectiveStn`: STNs whose localiser predicts a
  pixel-space matrix warped with ``kornia.geometry.transform.warp_affine`` / ``warp_perspective``.
- :class:`TwoStageStn`: two spatial transformers in sequence, the first an affine grid written
  with ``einsum`` over a meshgrid, the second a homography applied with ``bmm``.

``CASES`` lists every module with its input shape and what kind of output it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CASES",
    "Case",
    "OcrTpsRectifier",
    "OcrTpsNet",
    "AsterRectifier",
    "AsterTpsNet",
    "FlowWarp",
    "KorniaAffineStn",
    "KorniaPerspectiveStn",
    "TwoStageStn",
    "make",
]


def _deterministic(cls: type[nn.Module]) -> type[nn.Module]:
    """Build the module's weights from its ``seed`` (default 0), leaving the global RNG alone."""
    init = cls.__init__

    def __init__(self, *args, **kwargs) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(kwargs.get("seed", 0))
            init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _conv_block(cin: int, cout: int, pool: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                               nn.ReLU()]
    return layers + [nn.MaxPool2d(2)] if pool else layers


def _randomise_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Trained-looking running statistics, so BatchNorm is not an identity in eval mode."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def _near(last: nn.Linear, target: torch.Tensor, spread: float, generator) -> None:
    """A localiser head that outputs ``target`` plus an input-dependent deviation."""
    with torch.no_grad():
        last.weight.copy_(spread * torch.randn(last.weight.shape, generator=generator))
        last.bias.copy_(target.reshape(-1))


class _Recogniser(nn.Module):
    """Conv columns -> per-column class scores [N, T, classes] (a CTC-style text head)."""

    def __init__(self, channels: int, height: int, steps: int = 25, classes: int = 37) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_block(channels, 16), *_conv_block(16, 32))
        self.pool = nn.AdaptiveAvgPool2d((1, steps))
        self.fc = nn.Linear(32, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        columns = self.pool(self.body(image)).squeeze(2).permute(0, 2, 1)  # [N, T, 32]
        return self.fc(columns)


# ---- RARE-style TPS (fiducials on the top and bottom edges, constant matrices, bmm) ----------


def _fiducials(count: int) -> np.ndarray:
    xs = np.linspace(-1.0, 1.0, count // 2)
    top = np.stack([xs, -np.ones_like(xs)], axis=1)
    bottom = np.stack([xs, np.ones_like(xs)], axis=1)
    return np.concatenate([top, bottom]).astype(np.float64)  # [F, 2]


def _tps_matrices(ctrl: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(inverse of the [F+3, F+3] TPS system, [H*W, F+3] target-pixel rows), float64."""
    k = len(ctrl)
    d2 = ((ctrl[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        radial = np.where(d2 > 0, 0.5 * d2 * np.log(d2), 0.0)
    delta = np.zeros((k + 3, k + 3))
    delta[:k, :k] = radial
    delta[:k, k] = 1.0
    delta[:k, k + 1:] = ctrl
    delta[k, :k] = 1.0
    delta[k + 1:, :k] = ctrl.T
    # target pixel centres in [-1, 1] (align_corners=False convention)
    xs = (np.arange(-width, width, 2) + 1.0) / width
    ys = (np.arange(-height, height, 2) + 1.0) / height
    gx, gy = np.meshgrid(xs, ys)
    pixels = np.stack([gx, gy], axis=-1).reshape(-1, 2)
    d2p = ((pixels[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        radial_p = np.where(d2p > 0, 0.5 * d2p * np.log(d2p), 0.0)
    rows = np.concatenate([radial_p, np.ones((len(pixels), 1)), pixels], axis=1)
    return np.linalg.inv(delta), rows


@_deterministic
class OcrTpsRectifier(nn.Module):
    """Localiser -> 20 source fiducials -> TPS grid (bmm with constants) -> border sampling."""

    def __init__(self, channels: int = 3, height: int = 32, width: int = 100,
                 fiducials: int = 20, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out_hw = (height, width)
        self.fiducials = fiducials
        self.loc = nn.Sequential(
            *_conv_block(channels, 16), *_conv_block(16, 32), *_conv_block(32, 64),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(),
            nn.Linear(64, 2 * fiducials),
        )
        _randomise_batchnorm(self.loc, g)
        ctrl = _fiducials(fiducials)
        _near(self.loc[-1], torch.from_numpy(0.9 * ctrl).float(), 0.02, g)
        inverse, rows = _tps_matrices(ctrl, height, width)
        # float32 constants, as the published implementations keep them
        self.register_buffer("inv_delta_c", torch.from_numpy(inverse).float())
        self.register_buffer("p_hat", torch.from_numpy(rows).float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        c_prime = self.loc(image).view(n, self.fiducials, 2)
        zeros = torch.zeros(n, 3, 2).float().to(image.device)  # dtype fixed here, as published
        padded = torch.cat([c_prime, zeros], dim=1)
        transform = torch.bmm(self.inv_delta_c.repeat(n, 1, 1), padded)
        points = torch.bmm(self.p_hat.repeat(n, 1, 1), transform)
        grid = points.reshape(n, self.out_hw[0], self.out_hw[1], 2)
        return F.grid_sample(image, grid, padding_mode="border", align_corners=False)


@_deterministic
class OcrTpsNet(nn.Module):
    """The TPS rectifier in front of a CTC-style recogniser: [N,3,32,100] -> [N,25,37]."""

    def __init__(self, channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.rectifier = OcrTpsRectifier(channels, seed=seed)
        self.recogniser = _Recogniser(channels, 32)
        _randomise_batchnorm(self.recogniser, torch.Generator().manual_seed(seed + 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.recogniser(self.rectifier(image))


# ---- ASTER-style TPS ([0, 1] control points, downsampled localiser, clamped grid) ----------


@_deterministic
class AsterRectifier(nn.Module):
    """3x64x256 in, 32x100 out; the localiser runs on a 32x64 copy of the input."""

    def __init__(self, out_height: int = 32, out_width: int = 100, points: int = 20,
                 margin: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out_hw = (out_height, out_width)
        self.points = points
        self.loc = nn.Sequential(
            *_conv_block(3, 32), *_conv_block(32, 64), *_conv_block(64, 128),
            *_conv_block(128, 128), nn.Flatten(), nn.Linear(128 * 2 * 4, 512), nn.ReLU(),
            nn.Linear(512, 2 * points),
        )
        _randomise_batchnorm(self.loc, g)
        xs = np.linspace(margin, 1.0 - margin, points // 2)
        target = np.concatenate([np.stack([xs, np.full_like(xs, margin)], 1),
                                 np.stack([xs, np.full_like(xs, 1.0 - margin)], 1)])
        # the head outputs logits of [0, 1] positions: start at the target lattice
        logits = np.log(target / (1.0 - target))
        _near(self.loc[-1], torch.from_numpy(logits).float(), 0.01, g)
        self.register_buffer("target", torch.from_numpy(target).float(), persistent=False)
        kernel = self._kernel(torch.from_numpy(target))
        self.register_buffer("inverse_kernel", torch.linalg.inv(kernel).float(), persistent=False)
        ys, xs_ = torch.meshgrid(torch.linspace(0, 1, out_height, dtype=torch.float64),
                                 torch.linspace(0, 1, out_width, dtype=torch.float64),
                                 indexing="ij")
        coords = torch.stack([xs_, ys], dim=-1).reshape(-1, 2)
        repr_ = torch.cat([self._radial(coords, torch.from_numpy(target)),
                           torch.ones(len(coords), 1, dtype=torch.float64), coords], dim=1)
        self.register_buffer("target_repr", repr_.float(), persistent=False)

    @staticmethod
    def _radial(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return 0.5 * d2 * torch.log(d2.clamp_min(1e-12))

    def _kernel(self, target: torch.Tensor) -> torch.Tensor:
        t = target.to(torch.float64)
        k = len(t)
        kernel = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        kernel[:k, :k] = self._radial(t, t)
        kernel[:k, k] = 1.0
        kernel[k, :k] = 1.0
        kernel[:k, k + 1:] = t
        kernel[k + 1:, :k] = t.T
        return kernel

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        small = F.interpolate(image, size=(32, 64), mode="bilinear", align_corners=True)
        source = torch.sigmoid(self.loc(small)).view(n, self.points, 2)
        y = torch.cat([source, torch.zeros(n, 3, 2, dtype=source.dtype)], dim=1)
        mapping = torch.matmul(self.inverse_kernel, y)
        coords = torch.matmul(self.target_repr, mapping)  # [N, H*W, 2] in [0, 1]
        grid = coords.view(n, self.out_hw[0], self.out_hw[1], 2).clamp(0, 1)
        return F.grid_sample(image, 2.0 * grid - 1.0, align_corners=False)


@_deterministic
class AsterTpsNet(nn.Module):
    """ASTER-style rectifier in front of a recogniser: [N,3,64,256] -> [N,25,37]."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.rectifier = AsterRectifier(seed=seed)
        self.recogniser = _Recogniser(3, 32)
        _randomise_batchnorm(self.recogniser, torch.Generator().manual_seed(seed + 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.recogniser(self.rectifier(image))


# ---- 2-D registration: identity grid + dense flow -----------------------------------------


@_deterministic
class FlowWarp(nn.Module):
    """[N, 2, H, W] (moving, fixed) -> the moving image warped by a predicted flow field."""

    def __init__(self, size: int = 64, mode: str = "bilinear", max_flow: float = 3.0,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mode = mode
        self.encoder = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 32, 3, padding=1), nn.LeakyReLU(0.2),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(32, 16, 3, padding=1), nn.LeakyReLU(0.2),
        )
        self.flow = nn.Conv2d(16, 2, 3, padding=1)
        with torch.no_grad():
            self.flow.weight.copy_(3.0 * torch.randn(self.flow.weight.shape, generator=g))
            self.flow.bias.zero_()
        self.max_flow = max_flow
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.register_buffer("identity", torch.stack([ys, xs]).unsqueeze(0).float(),
                             persistent=False)
        self.size = size

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        moving = pair[:, :1]
        flow = self.max_flow * torch.tanh(self.flow(self.decoder(self.encoder(pair))))
        locations = self.identity + flow  # (row, col) pixel positions
        normalised = 2.0 * (locations / (self.size - 1) - 0.5)
        grid = normalised.permute(0, 2, 3, 1)[..., [1, 0]]  # (x, y) order for grid_sample
        return F.grid_sample(moving, grid, mode=self.mode, align_corners=True)


# ---- kornia ---------------------------------------------------------------------------------


class _PixelStn(nn.Module):
    """Shared body: localiser predicting a pixel-space matrix, then a classifier."""

    def __init__(self, params: int, identity: torch.Tensor, seed: int, size: int = 64,
                 classes: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.size = size
        self.loc = nn.Sequential(*_conv_block(3, 16), *_conv_block(16, 32),
                                 nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, params))
        _randomise_batchnorm(self.loc, g)
        _near(self.loc[-1], identity, 0.01, g)
        self.head = nn.Sequential(*_conv_block(3, 16), *_conv_block(16, 32),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, classes))
        _randomise_batchnorm(self.head, g)


@_deterministic
class KorniaAffineStn(_PixelStn):
    """Localiser -> 2x3 pixel-space matrix -> kornia warp_affine -> classifier (3x64x64)."""

    def __init__(self, align_corners: bool = True, seed: int = 0) -> None:
        c = 31.5
        rot = torch.tensor([[0.96, -0.2, 0.0], [0.2, 0.96, 0.0]])
        rot[:, 2] = torch.tensor([c, c]) - rot[:, :2] @ torch.tensor([c, c])  # about the centre
        super().__init__(6, rot, seed)
        self.align_corners = align_corners

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import warp_affine

        matrix = self.loc(image).view(-1, 2, 3)
        warped = warp_affine(image, matrix, (self.size, self.size),
                             align_corners=self.align_corners)
        return self.head(warped)


@_deterministic
class KorniaPerspectiveStn(_PixelStn):
    """Localiser -> 8 homography entries (h33 = 1) -> kornia warp_perspective -> classifier."""

    def __init__(self, padding_mode: str = "zeros", seed: int = 0) -> None:
        identity = torch.tensor([1.0, 0.05, -2.0, -0.04, 1.0, 1.5, 2e-4, -1e-4])
        super().__init__(8, identity, seed)
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import warp_perspective

        params = self.loc(image)
        ones = torch.ones_like(params[:, :1])
        homography = torch.cat([params, ones], dim=1).view(-1, 3, 3)
        warped = warp_perspective(image, homography, (self.size, self.size),
                                  padding_mode=self.padding_mode, align_corners=True)
        return self.head(warped)


# ---- two transformers in sequence ------------------------------------------------------------


def _pixel_centres(height: int, width: int) -> torch.Tensor:
    """[H, W, 3] homogeneous (x, y, 1) target points, align_corners=False convention."""
    ys = (torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).float()


@_deterministic
class TwoStageStn(nn.Module):
    """Affine ST (einsum over a meshgrid) then projective ST (bmm, divide) then a classifier."""

    def __init__(self, size: int = 42, out: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out = out
        self.loc1 = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                  nn.Flatten(), nn.Linear(72, 6))
        _near(self.loc1[-1], torch.tensor([0.9, 0.1, 0.05, -0.1, 0.9, -0.05]), 0.02, g)
        self.loc2 = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                  nn.Flatten(), nn.Linear(72, 8))
        _near(self.loc2[-1], torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.05, -0.05]), 0.02, g)
        self.register_buffer("points1", _pixel_centres(size, size), persistent=False)
        self.register_buffer("points2", _pixel_centres(out, out).reshape(-1, 3),
                             persistent=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(out * out, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        theta = self.loc1(image).view(-1, 2, 3)
        grid = torch.einsum("hwk,njk->nhwj", self.points1, theta)
        first = F.grid_sample(image, grid, align_corners=False)
        n = image.shape[0]
        params = self.loc2(first)
        homography = torch.cat([params, torch.ones(n, 1)], dim=1).view(n, 3, 3)
        points = torch.bmm(self.points2.expand(n, -1, -1), homography.transpose(1, 2))
        grid2 = (points[..., :2] / points[..., 2:]).view(n, self.out, self.out, 2)
        second = F.grid_sample(first, grid2, padding_mode="border", align_corners=False)
        return self.head(second)


# ---- the table the tests walk ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One realistic module: how to build it and what it takes and returns."""

    name: str
    cls: type[nn.Module]
    input_shape: tuple[int, int, int]
    kwargs: dict = field(default_factory=dict)
    output: str = "classes"  # how verify judges it: "classes", "sequence" or "image"
    fusable: int = 0  # warps whose grid is affine or projective in a transform matrix


CASES: tuple[Case, ...] = (
    Case("ocr-tps", OcrTpsNet, (3, 32, 100), output="sequence"),
    Case("ocr-tps-rectifier", OcrTpsRectifier, (3, 32, 100), output="image"),
    Case("aster-tps", AsterTpsNet, (3, 64, 256), output="sequence"),
    Case("aster-rectifier", AsterRectifier, (3, 64, 256), output="image"),
    Case("flow-bilinear", FlowWarp, (2, 64, 64), {"mode": "bilinear"}, output="image"),
    Case("flow-nearest", FlowWarp, (2, 64, 64), {"mode": "nearest"}, output="image"),
    Case("kornia-affine", KorniaAffineStn, (3, 64, 64), fusable=1),
    Case("kornia-perspective", KorniaPerspectiveStn, (3, 64, 64), fusable=1),
    Case("two-stage", TwoStageStn, (1, 42, 42), fusable=2),
)


def make(case: Case) -> nn.Module:
    """The case's module in eval mode (deterministic weights from its seed)."""
    return case.cls(**case.kwargs).eval()
