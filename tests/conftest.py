"""Shared fixtures and the hardware markers' skip logic."""

from __future__ import annotations

import importlib.util

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    cuda = _has_cuda()
    trt = importlib.util.find_spec("tensorrt") is not None
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_trt = pytest.mark.skip(
        reason="needs the tensorrt package and a CUDA GPU "
        f"(tensorrt importable: {trt}, CUDA GPU: {cuda}); run `make trt-check` on a GPU machine"
    )
    for item in items:
        if "tensorrt" in item.keywords and not (trt and cuda):
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    """A fresh, unseeded generator: parity tests must hold for any random input."""
    import numpy as np

    return np.random.default_rng()
