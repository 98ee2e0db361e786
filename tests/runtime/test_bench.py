"""runtime.bench as plain units: percentiles, interleaving, failures, table, record, plot."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from stn_deploy.runtime.bench import (
    BenchRow,
    LatencyStats,
    environment,
    format_table,
    measure_interleaved,
    plot_rows,
    save_record,
    speedup,
)
from stn_deploy.runtime.session import Session, TensorSpec


class SleepySession(Session):
    """Sleeps ``delay`` seconds per call; records the order of calls in ``log``."""

    backend = "fake"

    def __init__(self, name, delay, log, fail=False):
        super().__init__()
        self.name, self.delay, self.log, self.fail = name, delay, log, fail

    def _open(self):
        self.inputs = (TensorSpec("input", (None, 1, 4, 4), "float32"),)
        self.outputs = (TensorSpec("logits", (None, 2), "float32"),)

    def _infer(self, feeds):
        if self.fail:
            raise RuntimeError("backend exploded\nsecond line")
        self.log.append(self.name)
        time.sleep(self.delay)
        return {"logits": np.zeros((len(feeds["input"]), 2), np.float32)}


def test_latency_stats_percentiles_and_throughput():
    stats = LatencyStats.from_times([0.001 * i for i in range(1, 101)], batch=8)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput == pytest.approx(8 / 0.0505)
    assert stats.calls == 100


def test_interleaved_measurement_orders_speed_and_reports_failures():
    log: list[str] = []
    sessions = {
        "fast": SleepySession("fast", 0.001, log).open(),
        "slow": SleepySession("slow", 0.004, log).open(),
        "broken": SleepySession("broken", 0, log, fail=True).open(),
    }
    x = np.random.default_rng().random((3, 1, 4, 4), dtype=np.float32)
    out = measure_interleaved(sessions, x, min_time=0.12, rounds=3, warmup=1)
    assert out["broken"] == "RuntimeError: backend exploded"
    assert out["slow"].p50_ms > 3 * out["fast"].p50_ms
    assert out["fast"].throughput > out["slow"].throughput
    # interleaved: the run switches backend several times after the warm-up calls
    switches = sum(a != b for a, b in zip(log[2:], log[3:]))
    assert switches >= 5


def _rows():
    fast = LatencyStats(1.0, 1.5, 2.0, 1.1, 900.0, 10)
    slow = LatencyStats(4.0, 5.0, 6.0, 4.2, 240.0, 10)
    return [BenchRow("ort", 1, fast), BenchRow("torch", 1, slow),
            BenchRow("compile", 1, error="BackendCompilerFailed: no compiler")]


def test_speedup_and_table():
    rows = _rows()
    assert speedup(rows, "ort", "torch", 1) == pytest.approx(4.0)
    assert speedup(rows, "compile", "torch", 1) is None
    table = format_table(rows)
    assert "4.00x" in table and "unavailable: BackendCompilerFailed: no compiler" in table


def test_record_and_plot(tmp_path):
    record = {"environment": environment(), "rows": [r.to_dict() for r in _rows()]}
    path = save_record(record, tmp_path / "r" / "bench.json")
    loaded = json.loads(path.read_text())
    assert loaded["environment"]["versions"]["onnxruntime"]
    assert loaded["environment"]["cpu_count"] >= 1
    assert loaded["rows"][0]["p50_ms"] == 1.0 and loaded["rows"][2]["error"]
    png = plot_rows(_rows(), tmp_path / "bench.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
