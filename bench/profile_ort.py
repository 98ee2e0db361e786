"""Where ONNX Runtime spends its time: per-op-type share for our export vs the plain one.

    .venv/bin/python bench/profile_ort.py [CHECKPOINT] [--batch 64] [--runs 50]

Exports the checkpoint twice (ours at opset 18, plain torch.onnx.export defaults at opset 20),
runs each with ONNX Runtime's profiler and prints the kernel time per op type. This is how the
affine-grid decomposition (Mul + ReduceSum) showed up as the largest cost of the plain export.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stn_deploy.export.loading import load_checkpoint
from stn_deploy.export.onnx_export import export_module, export_plain


def profile(path: Path, x: np.ndarray, runs: int, prefix: Path) -> dict[str, float]:
    """Kernel microseconds per op type, averaged over ``runs`` calls."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x})  # the first call allocates; it is in the trace but small
    for _ in range(runs):
        session.run(None, {"input": x})
    trace = Path(session.end_profiling())
    per_op: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="tutorial-R")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    x = np.random.default_rng(0).random((args.batch, *loaded.input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "ours (opset 18)": export_module(loaded.model, loaded.input_shape,
                                             Path(tmp) / "ours.onnx").path,
            "plain (opset 20)": export_plain(loaded.model, loaded.input_shape,
                                             Path(tmp) / "plain.onnx"),
        }
        for name, path in paths.items():
            per_op = profile(path, x, args.runs, Path(tmp) / name.split()[0])
            total = sum(per_op.values())
            print(f"{name}: {total / 1e3:.2f} ms kernel time per batch of {args.batch}")
            for op, us in per_op.items():
                print(f"    {op:<14}{us / 1e3:>8.3f} ms {us / total:>7.1%}")


if __name__ == "__main__":
    main()
