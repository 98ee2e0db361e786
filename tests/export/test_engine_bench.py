"""bench/trt_check.py on a machine without a GPU: it refuses with the reason; parity helper."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "trt_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("trt_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_tensorrt_it_exits_2_and_says_why():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    env = {**os.environ, "STN_DEPLOY_TENSORRT": "tensorrt"}  # TensorRT-RTX may be installed
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert "trt-check needs TensorRT and an NVIDIA GPU" in done.stderr
    assert "pip install tensorrt" in done.stderr


def test_with_tensorrt_rtx_but_no_gpu_it_exits_2_and_says_why():
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("tensorrt_rtx is not installed here")
    from stn_deploy.runtime.cuda_util import load_cuda
    from stn_deploy.runtime.session import BackendUnavailableError

    try:
        load_cuda(0)
        pytest.skip("this machine has a GPU")
    except BackendUnavailableError:
        pass
    env = {**os.environ, "STN_DEPLOY_TENSORRT": "tensorrt_rtx"}
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert "trt-check needs TensorRT and an NVIDIA GPU: TensorRT-RTX 1." in done.stderr
    assert "is installed but no usable CUDA binding" in done.stderr


def test_parity_against_the_reference(rng):
    from stn_deploy.runtime import TensorSpec, TorchSession

    torch = pytest.importorskip("torch")
    sess = TorchSession(torch.nn.Flatten(), [TensorSpec("input", (None, 1, 2, 2))], ["logits"])
    x = rng.standard_normal((6, 1, 2, 2)).astype(np.float32)
    reference = x.reshape(6, 4).copy()
    reference[0, :] += 0.5  # shifts sample 0's logits by 0.5 without changing its argmax
    reference[1, :] = 0.0
    reference[1, (x[1].reshape(4).argmax() + 1) % 4] = 9.0  # sample 1 now disagrees
    with sess:
        got = _load()._parity(sess, x, reference)
    assert got["top1_agreement"] == pytest.approx(5 / 6)
    assert got["max_abs_err"] == pytest.approx(np.abs(x.reshape(6, 4) - reference).max())
