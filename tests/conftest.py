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


def _trt_gpu() -> bool:
    """A GPU that the TensorRT session's CUDA binding sees (cuda-python, or a CUDA torch).

    The Makefile installs CPU torch even on a GPU machine, so torch.cuda alone would skip the
    TensorRT tests there.
    """
    from stn_deploy.runtime.cuda_util import load_cuda
    from stn_deploy.runtime.session import BackendUnavailableError

    try:
        load_cuda(0)
    except BackendUnavailableError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    cuda = _has_cuda()
    trt = importlib.util.find_spec("tensorrt") is not None
    trt_gpu = trt and (cuda or _trt_gpu())
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_trt = pytest.mark.skip(
        reason="needs the tensorrt package and a CUDA GPU "
        f"(tensorrt importable: {trt}, CUDA GPU: {trt_gpu or cuda}); "
        "run `make trt-check` on a GPU machine"
    )
    for item in items:
        if "tensorrt" in item.keywords and not trt_gpu:
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng():
    """A fresh, unseeded generator: parity tests must hold for any random input."""
    import numpy as np

    return np.random.default_rng()


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Neither TensorRT nor TensorRT-RTX importable, as on a machine with neither installed."""
    import sys

    for name in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delenv("STN_DEPLOY_TENSORRT", raising=False)
