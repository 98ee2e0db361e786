"""CPU benchmark at real STN sizes: eager, torch.compile, ONNX Runtime standard and plugin flavour.

Models (tests/realistic_stns.py, next to the tutorial STN):

- tutorial-R, 1x28x28 (affine, the shipped checkpoint);
- kornia-affine and kornia-perspective, 3x64x64 (fused affine / projective plugin nodes);
- ocr-tps-gray, 1x32x100 (a grayscale OCR TPS rectifier + recogniser: STNGridSample);
- aster-tps, 3x64x256 (ASTER-style TPS, 32x100 output: STNGridSample);
- flow-bilinear, 2x64x64 (a dense flow field: STNGridSample).

Three sections, each measured in interleaved rounds (a neighbour process slows every variant
alike), with the machine, versions, date and /proc/loadavg in the JSON:

1. models: batch 1 and 32, one and two threads, backends torch / compile / ort / ort-plugin;
   the issue's targets (plugin >= 2x standard and >= 1.5x eager at batch 32, >= 3x eager at
   batch 1) evaluated per model and thread count;
2. kernels: every plugin call of each model at batch 32, timed on the arrays the model feeds it,
   as GB/s of its minimum traffic (X + coordinates + Y) against a memcpy of the same number of
   bytes in the same rounds, next to PyTorch's and ONNX Runtime's samplers on the same inputs;
3. per-call cost of the two ONNX Runtime routes for a plugin node (onnxruntime-extensions'
   Python custom op, our staged native route) on a one-node graph, tiny and real-sized.

    .venv/bin/python bench/cpu_realistic.py --out bench/results/cpu-realistic.json \\
        --plot bench/results/cpu-realistic.png
    .venv/bin/python bench/cpu_realistic.py --models tutorial-R --threads 1 --min-time 0.2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "compile", "ort", "ort-plugin")
# (model, batch, minimum speed-up of ort-plugin over the baseline) per the issue
TARGETS = (("ort", 32, 2.0), ("torch", 32, 1.5), ("torch", 1, 3.0))


def _realistic():
    spec = importlib.util.spec_from_file_location("realistic_stns",
                                                  ROOT / "tests" / "realistic_stns.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["realistic_stns"] = module
    spec.loader.exec_module(module)
    return module


def _models() -> dict:
    """name -> (builder, input shape)."""
    rs = _realistic()

    def tutorial():
        from stn_deploy.export.loading import load_checkpoint

        return load_checkpoint("tutorial-R").model

    return {
        "tutorial-R": (tutorial, (1, 28, 28)),
        "kornia-affine": (lambda: rs.KorniaAffineStn().eval(), (3, 64, 64)),
        "kornia-perspective": (lambda: rs.KorniaPerspectiveStn().eval(), (3, 64, 64)),
        "ocr-tps-gray": (lambda: rs.OcrTpsNet(channels=1).eval(), (1, 32, 100)),
        "aster-tps": (lambda: rs.AsterTpsNet().eval(), (3, 64, 256)),
        "flow-bilinear": (lambda: rs.FlowWarp(mode="bilinear").eval(), (2, 64, 64)),
    }


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def _interleaved(fns: dict, rounds: int, budget: float) -> dict[str, float]:
    """Median per-call seconds of each function, timed in ``rounds`` interleaved rounds."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            calls = 0
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= budget / rounds and calls >= 3:
                    break
            samples[name].append(elapsed / calls)
    return {k: float(np.median(v)) for k, v in samples.items()}


# -- 1. models ----------------------------------------------------------------------------------
def bench_model(name, build, shape, args, workdir: Path) -> dict:
    import onnx

    from stn_deploy.bench import run_bench
    from stn_deploy.export.onnx_export import export_module

    model = build()
    std = export_module(model, shape, workdir / f"{name}.onnx").path
    plugin = export_module(model, shape, workdir / f"{name}.plugin.onnx", flavour="plugin").path
    ops = [n.op_type for n in onnx.load(str(plugin)).graph.node if n.domain == "stn"]
    rows = []
    for threads in args.threads:
        load_before = _loadavg()
        got = run_bench(model, shape, backends=args.backends, batch_sizes=args.batches,
                        min_time=args.min_time, threads=threads,
                        prebuilt={"ort": std, "ort-plugin": plugin})
        for r in got:
            rows.append({**r.to_dict(), "threads": threads, "loadavg_before": load_before})
        print(f"  {name} threads={threads}: " + ", ".join(
            f"{r.backend}@{r.batch} {r.stats.p50_ms:.3f} ms" if r.stats else
            f"{r.backend}@{r.batch} unavailable" for r in got), flush=True)
    return {"name": name, "input_shape": list(shape), "plugin_nodes": ops, "rows": rows,
            "onnx": {"standard": str(std), "plugin": str(plugin)}}


def evaluate_targets(record: dict) -> list[dict]:
    out = []
    for threads in sorted({r["threads"] for r in record["rows"]}):
        p50 = {(r["backend"], r["batch"]): r.get("p50_ms") for r in record["rows"]
               if r["threads"] == threads}
        batches = {r["batch"] for r in record["rows"]}
        for baseline, batch, need in TARGETS:
            if batch not in batches:
                continue
            mine, base = p50.get(("ort-plugin", batch)), p50.get((baseline, batch))
            got = None if not mine or not base else base / mine
            out.append({"model": record["name"], "threads": threads, "batch": batch,
                        "baseline": baseline, "target": need, "speedup": got,
                        "met": None if got is None else got >= need})
    return out


# -- 2. kernels -----------------------------------------------------------------------------------
def _plugin_calls(plugin_path: Path, shape, batch: int, threads: int):
    from stn_deploy.runtime import OrtSession

    session = OrtSession(plugin_path, threads=threads).open()
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    trace: list = []
    session._staged.run({session.input_names[0]: x}, trace=trace)
    return [(call, np.ascontiguousarray(a), np.ascontiguousarray(c)) for call, a, c in trace]


def _torch_grid(call, coords, x_shape):
    import torch
    import torch.nn.functional as F

    from stn_deploy.models.sampling import base_grid, projective_grid

    c = torch.from_numpy(coords)
    if call.source == 0:
        return c
    oh, ow = call.out_hw
    if call.source == 1:
        return F.affine_grid(c, [x_shape[0], x_shape[1], oh, ow],
                             align_corners=bool(call.align_corners))
    return projective_grid(c, base_grid(oh, ow, align_corners=bool(call.align_corners)), (oh, ow))


def _ort_grid_sample(call, x, grid, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    modes = {0: "linear", 1: "nearest", 2: "cubic"}
    pads = {0: "zeros", 1: "border", 2: "reflection"}
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=modes[call.mode],
                            padding_mode=pads[call.padding], align_corners=call.align_corners)
    graph = helper.make_graph(
        [node], "gs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
                       helper.make_tensor_value_info("grid", TensorProto.FLOAT, list(grid.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x, "grid": grid})


def _kernel_variants(call, x, coords, threads: int) -> tuple[dict, int, int]:
    """The timed functions for one plugin call: our kernel, a memcpy of its traffic, PyTorch's
    and ONNX Runtime's samplers on the same inputs. Returns (functions, traffic, memcpy bytes)."""
    import torch
    import torch.nn.functional as F

    from stn_deploy.plugins import cpu

    oh, ow = call.out_hw or coords.shape[1:3]
    y = np.empty((x.shape[0], x.shape[1], oh, ow), dtype=np.float32)
    traffic = x.nbytes + coords.nbytes + y.nbytes
    src = np.ones(traffic // 2 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    grid_t = _torch_grid(call, coords, x.shape)
    x_t = torch.from_numpy(x)
    sampler = {"mode": ("bilinear", "nearest", "bicubic")[call.mode],
               "padding_mode": ("zeros", "border", "reflection")[call.padding],
               "align_corners": bool(call.align_corners)}
    fns = {
        "kernel": lambda: cpu.sample_into(call.source, x, coords, y, call.mode, call.padding,
                                          call.align_corners, threads),
        "memcpy": lambda: np.copyto(dst, src),
        "torch_grid_sample": lambda: F.grid_sample(x_t, grid_t, **sampler),
        "ort_grid_sample": _ort_grid_sample(call, x, np.ascontiguousarray(grid_t.numpy()),
                                            threads),
    }
    if call.source:  # what an eager STN pays: the grid, then the sampler
        fns["torch_grid_and_sample"] = lambda: F.grid_sample(
            x_t, _torch_grid(call, coords, x.shape), **sampler)
    return fns, traffic, 2 * src.nbytes


def bench_kernels(record: dict, args) -> list[dict]:
    import torch

    out = []
    calls = _plugin_calls(Path(record["onnx"]["plugin"]), record["input_shape"], 32, 1)
    for index, (call, x, coords) in enumerate(calls):
        for threads in args.threads:
            torch.set_num_threads(threads)
            fns, traffic, copied = _kernel_variants(call, x, coords, threads)
            t = _interleaved(fns, rounds=5, budget=args.min_time)
            memcpy_gbps = copied / t["memcpy"] / 1e9
            kernel_gbps = traffic / t["kernel"] / 1e9
            oh, ow = call.out_hw or coords.shape[1:3]
            row = {"model": record["name"], "call": index, "op": call.op_type,
                   "mode": ("bilinear", "nearest", "bicubic")[call.mode],
                   "padding": ("zeros", "border", "reflection")[call.padding],
                   "threads": threads, "x_shape": list(x.shape),
                   "coords_shape": list(coords.shape), "y_shape": [*x.shape[:2], oh, ow],
                   "traffic_bytes": traffic, **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                   "kernel_GBps": kernel_gbps, "memcpy_GBps": memcpy_gbps,
                   "kernel_over_memcpy": kernel_gbps / memcpy_gbps}
            out.append(row)
            print(f"  kernel {record['name']}#{index} {call.op_type} {row['mode']} t={threads}: "
                  f"{row['kernel_ms']:.3f} ms = {kernel_gbps:.1f} GB/s "
                  f"({100 * row['kernel_over_memcpy']:.0f}% of memcpy {memcpy_gbps:.1f} GB/s); "
                  f"torch grid_sample {row['torch_grid_sample_ms']:.3f} ms, "
                  f"ORT GridSample {row['ort_grid_sample_ms']:.3f} ms", flush=True)
    torch.set_num_threads(max(args.threads))
    return out


# -- 3. per-call cost of the two ONNX Runtime routes ----------------------------------------------
def _one_node(call, x_shape, coords_shape) -> bytes:
    from onnx import TensorProto, helper

    from stn_deploy.plugins import names

    attrs = {names.ATTR_INTERPOLATION_MODE: call.mode, names.ATTR_PADDING_MODE: call.padding,
             names.ATTR_ALIGN_CORNERS: call.align_corners}
    if call.out_hw:
        attrs.update({names.ATTR_OUT_HEIGHT: call.out_hw[0], names.ATTR_OUT_WIDTH: call.out_hw[1]})
    node = helper.make_node(call.op_type, ["x", "c"], ["y"], domain="stn", **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                        helper.make_tensor_value_info("c", TensorProto.FLOAT, coords_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("stn", 1)])
    return model.SerializeToString()


def bench_per_call(records: list[dict], args) -> list[dict]:
    from stn_deploy.plugins import cpu, ort_ops
    from stn_deploy.runtime import OrtSession

    out = []
    seen = set()
    for record in records:
        for call, x, coords in _plugin_calls(Path(record["onnx"]["plugin"]),
                                             record["input_shape"], 1, 1):
            if call.op_type in seen:
                continue
            seen.add(call.op_type)
            tiny_x = x[:, :, :1, :1].copy()
            tiny_c = coords[:, :1, :1].copy() if call.source == 0 else coords
            tiny = dataclasses.replace(call, out_hw=(1, 1) if call.out_hw else None)
            for label, c, xx, cc in (("1x1 output", tiny, tiny_x, tiny_c),
                                     ("model size", call, x, coords)):
                model = _one_node(c, list(xx.shape), list(cc.shape))
                native = OrtSession(model, threads=1).open()
                python = OrtSession(model, threads=1, session_hooks=[ort_ops.register],
                                    plugin_route="python").open()
                oh, ow = c.out_hw or cc.shape[1:3]
                y = np.empty((xx.shape[0], xx.shape[1], oh, ow), dtype=np.float32)
                feeds = {"x": xx, "c": cc}
                t = _interleaved({
                    "python_custom_op": lambda p=python, f=feeds: p.infer(f),
                    "native_staged": lambda s=native, f=feeds: s.infer(f),
                    "kernel_alone": lambda a=xx, b=cc, yy=y, c=c: cpu.sample_into(
                        c.source, a, b, yy, c.mode, c.padding, c.align_corners, 1),
                }, rounds=5, budget=args.min_time)
                row = {"op": call.op_type, "case": label, "x_shape": list(xx.shape),
                       "y_shape": list(y.shape), **{f"{k}_us": v * 1e6 for k, v in t.items()}}
                out.append(row)
                print(f"  per call {call.op_type} {label}: python op "
                      f"{row['python_custom_op_us']:.1f} us, native staged "
                      f"{row['native_staged_us']:.1f} us, kernel alone "
                      f"{row['kernel_alone_us']:.1f} us", flush=True)
    return out


# -- report -------------------------------------------------------------------------------------
def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(records))
    rows = -(-len(records) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(records):]:
        ax.set_visible(False)
    for ax, record in zip(axes.flat, records):
        configs = sorted({(r["batch"], r["threads"]) for r in record["rows"]})
        backends = list(dict.fromkeys(r["backend"] for r in record["rows"]))
        width = 0.8 / max(len(backends), 1)
        for i, backend in enumerate(backends):
            values = [next((r.get("p50_ms") or np.nan for r in record["rows"]
                            if (r["batch"], r["threads"]) == c and r["backend"] == backend),
                           np.nan) for c in configs]
            ax.bar(np.arange(len(configs)) + i * width, values, width, label=backend)
        ax.set_xticks(np.arange(len(configs)) + 0.4 - width / 2)
        ax.set_xticklabels([f"b{b} t{t}" for b, t in configs])
        ax.set_yscale("log")
        ax.set_title(f"{record['name']} {'x'.join(map(str, record['input_shape']))}")
        ax.set_ylabel("p50 latency (ms)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    from stn_deploy.runtime.bench import environment, save_record

    models = _models()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(models))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per variant and size")
    p.add_argument("--skip", default="", help="comma list of sections to skip: kernels,per-call")
    p.add_argument("--out")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = [m for m in args.models.split(",") if m not in models]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(models)}")
    record = {"environment": {**environment(), "loadavg_start": _loadavg()},
              "settings": {k: v for k, v in vars(args).items()}, "models": [], "targets": []}
    with tempfile.TemporaryDirectory(prefix="stn-realistic-") as tmp:
        for name in args.models.split(","):
            build, shape = models[name]
            print(f"{name} {shape}", flush=True)
            entry = bench_model(name, build, shape, args, Path(tmp))
            record["models"].append(entry)
            record["targets"] += evaluate_targets(entry)
        if "kernels" not in args.skip:
            record["kernels"] = [row for e in record["models"] for row in bench_kernels(e, args)]
        if "per-call" not in args.skip:
            record["per_call"] = bench_per_call(record["models"], args)
    record["environment"]["loadavg_end"] = _loadavg()
    for t in record["targets"]:
        got = "n/a" if t["speedup"] is None else f"{t['speedup']:.2f}x"
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"target {t['model']} t={t['threads']} batch {t['batch']}: ort-plugin vs "
              f"{t['baseline']} >= {t['target']}x: {got} ({verdict})")
    for e in record["models"]:
        e.pop("onnx", None)
    if args.out:
        print(f"wrote {save_record(record, args.out)}")
    if args.plot:
        plot(record["models"], args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
