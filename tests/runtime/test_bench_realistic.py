"""bench/cpu_realistic.py end to end on the smallest model, with tiny time budgets.

The figures themselves belong to bench/results/ (benchmarks print ratios; tests do not time);
this checks that every section runs and that its record carries what the README quotes: p50 per
backend, batch and thread count, the targets, kernel GB/s against a memcpy of the same bytes,
and the two ONNX Runtime routes' per-call cost.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    path = ROOT / "bench" / "cpu_realistic.py"
    spec = importlib.util.spec_from_file_location("cpu_realistic", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_realistic"] = module
    spec.loader.exec_module(module)
    return module


def test_realistic_bench_writes_its_record(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = _script().main(["--models", "tutorial-R", "--batches", "1,4", "--threads", "1",
                           "--backends", "torch,ort,ort-plugin", "--min-time", "0.05",
                           "--out", str(out), "--plot", str(png)])
    assert code == 0 and png.stat().st_size > 0
    record = json.loads(out.read_text())
    env = record["environment"]
    assert env["loadavg_start"] and env["loadavg_end"] and env["versions"]["onnxruntime"]
    (model,) = record["models"]
    assert model["name"] == "tutorial-R" and model["plugin_nodes"] == ["STNAffineGridSample"]
    rows = {(r["backend"], r["batch"]): r for r in model["rows"]}
    assert set(rows) == {(b, n) for b in ("torch", "ort", "ort-plugin") for n in (1, 4)}
    assert all(r["p50_ms"] > 0 and r["threads"] == 1 for r in rows.values())
    targets = {(t["baseline"], t["batch"]) for t in record["targets"]}
    assert targets == {("torch", 1)}  # batch 32 was not run: no batch-32 targets to judge
    (kernel,) = record["kernels"]
    assert kernel["op"] == "STNAffineGridSample" and kernel["x_shape"] == [32, 1, 28, 28]
    assert kernel["kernel_GBps"] > 0 and kernel["memcpy_GBps"] > 0
    assert kernel["kernel_over_memcpy"] == kernel["kernel_GBps"] / kernel["memcpy_GBps"]
    for key in ("torch_grid_sample_ms", "ort_grid_sample_ms", "torch_grid_and_sample_ms"):
        assert kernel[key] > 0
    cases = {(r["op"], r["case"]) for r in record["per_call"]}
    assert cases == {("STNAffineGridSample", "1x1 output"), ("STNAffineGridSample", "model size")}
    assert all(r["python_custom_op_us"] > 0 and r["native_staged_us"] > 0
               for r in record["per_call"])
    assert "target tutorial-R t=1 batch 1" in capsys.readouterr().out
