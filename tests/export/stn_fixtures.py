"""Small STNs for export tests: one per Warp kind and one calling F.* directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stn_deploy.models.sampling import WARPS, SamplerConfig


class TinySTN(nn.Module):
    """Conv localisation net -> Warp -> linear classifier, with random (non-identity) weights."""

    def __init__(self, kind="affine", mode="bilinear", padding="zeros", align_corners=False,
                 channels=1, size=(16, 16), classes=10):
        super().__init__()
        cfg = SamplerConfig(mode, padding, align_corners)
        self.warp = WARPS[kind](size, cfg)
        self.loc = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64, self.warp.num_params),
        )
        with torch.no_grad():  # start near the identity, like a trained STN, but not at it
            self.loc[-1].weight.mul_(0.3)
            jitter = 0.1 * torch.randn(self.warp.num_params)
            self.loc[-1].bias.copy_(self.warp.identity_params() + jitter)
        self.head = nn.Linear(channels * size[0] * size[1], classes)

    def forward(self, x):
        warped, _ = self.warp(x, self.loc(x))
        return self.head(warped.flatten(1))


class DirectSTN(nn.Module):
    """A user-style STN calling F.affine_grid / F.grid_sample itself."""

    def __init__(self, mode="bilinear", padding="zeros", align_corners=False):
        super().__init__()
        self.mode, self.padding, self.align_corners = mode, padding, align_corners
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 6))
        self.head = nn.Linear(16 * 16, 10)
        with torch.no_grad():
            self.loc[-1].weight.mul_(0.05)
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0.1, 0.05, -0.1, 0.9, 0.0]))

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=self.align_corners)
        warped = F.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding,
                               align_corners=self.align_corners)
        return self.head(warped.flatten(1))
