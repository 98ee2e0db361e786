"""bench/trt_check.py on a machine without a GPU: it refuses with the reason; its timer works."""

from __future__ import annotations

import importlib.util
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
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "trt-check needs TensorRT and an NVIDIA GPU" in done.stderr
    assert "pip install tensorrt" in done.stderr


def test_time_session_reports_latency_and_throughput(rng):
    from stn_deploy.runtime import TensorSpec, TorchSession

    torch = pytest.importorskip("torch")
    sess = TorchSession(torch.nn.Flatten(), [TensorSpec("input", (None, 1, 4, 4))], ["logits"])
    x = rng.standard_normal((16, 1, 4, 4)).astype(np.float32)
    with sess:
        row = _load().time_session(sess, x, batch=8, iters=12)
    assert row["batch"] == 8 and row["iters"] == 12
    assert 0 < row["median_ms"] <= row["p90_ms"]
    assert row["samples_per_s"] == pytest.approx(8 / row["median_ms"] * 1e3, rel=1e-3)
