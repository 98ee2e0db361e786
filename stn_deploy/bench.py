"""The ``bench`` subcommand: CPU latency/throughput of PyTorch, torch.compile and ONNX Runtime.

Backends: ``torch`` (eager), ``compile`` (torch.compile; its error is reported if it cannot run
here), ``ort`` (our standard-flavour export), ``ort-plugin`` (the plugin flavour: ONNX Runtime
with our CPU kernels for the plugin nodes, :mod:`stn_deploy.runtime.ort_stages`),
``ort-plugin-py`` (the same graph through onnxruntime-extensions' Python custom ops, to compare
routes) and ``ort-default`` (the same model exported with plain ``torch.onnx.export(dynamo=True)``
defaults at opset 20: the comparison baseline). The realistic-STN suite is
``bench/cpu_realistic.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["register", "run_bench", "TARGETS", "BACKENDS", "check_targets"]

BACKENDS = ("torch", "compile", "ort", "ort-plugin", "ort-default")
# Not in the default list: the slow route, measured by bench/cpu_realistic.py's per-call section.
EXTRA_BACKENDS = ("ort-plugin-py",)
# On a GPU machine with TensorRT: the built-in GridSample layer vs our plugin (not default).
TRT_BACKENDS = ("trt-builtin", "trt-plugin")
DEFAULT_BATCHES = (1, 8, 64, 256)
DEFAULT_CHECKPOINT = "tutorial-R"
# (backend, baseline, batch, minimum p50 speed-up): the targets for the tutorial STN.
TARGETS = (
    ("ort", "torch", 64, 2.0),
    ("ort", "torch", 1, 5.0),
    ("ort", "ort-default", 64, 1.5),
)


def register(sub) -> None:
    p = sub.add_parser("bench", help="CPU latency/throughput: PyTorch vs ONNX Runtime")
    p.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT,
                   help=f"checkpoint directory or shipped name (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)))
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"comma list of {BACKENDS + EXTRA_BACKENDS + TRT_BACKENDS}")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per backend and batch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all)")
    p.add_argument("--out", help="JSON file to write (e.g. bench/results/cpu.json)")
    p.add_argument("--plot", help="PNG file to write")
    p.set_defaults(func=_bench)


def _sessions(model, shape, backends, workdir: Path, threads: int | None, prebuilt: dict):
    """name -> opened Session, or name -> error text for a backend that cannot start."""
    from stn_deploy.export.onnx_export import export_module, export_plain
    from stn_deploy.runtime import OrtSession, TensorSpec, TorchSession

    spec = [TensorSpec("input", (None, *shape), "float32")]
    out: dict[str, object] = {}
    for name in backends:
        try:
            if name in ("torch", "compile"):
                out[name] = TorchSession(model, spec, compile=name == "compile", threads=threads)
            elif name in TRT_BACKENDS:
                from stn_deploy.export.engine import build_engine
                from stn_deploy.runtime.trt import TrtSession

                flavour = "standard" if name == "trt-builtin" else "plugin"
                onnx_path = export_module(model, shape, workdir / f"{name}.onnx", flavour=flavour)
                engine = build_engine(onnx_path.path, workdir / f"{name}.engine",
                                      report=lambda line: None)
                out[name] = TrtSession(engine.engine_path)
            elif name in prebuilt:
                out[name] = OrtSession(prebuilt[name], threads=threads)
            elif name == "ort":
                path = export_module(model, shape, workdir / "ort.onnx").path
                out[name] = OrtSession(path, threads=threads)
            elif name in ("ort-plugin", "ort-plugin-py"):
                out[name] = _plugin_session(name, model, shape, workdir, threads, prebuilt)
            elif name == "ort-default":
                path = export_plain(model, shape, workdir / "ort-default.onnx", opset=20)
                out[name] = OrtSession(path, threads=threads)
            else:
                raise ValueError(
                    f"unknown backend {name!r}; choose from "
                    f"{BACKENDS + EXTRA_BACKENDS + TRT_BACKENDS}"
                )
            out[name].open()
        except Exception as exc:  # noqa: BLE001 - reported in the table as "unavailable: ..."
            out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return out


def _plugin_session(name, model, shape, workdir: Path, threads: int | None, prebuilt: dict):
    """The plugin-flavour graph on ONNX Runtime: our kernels (native) or the Python custom ops."""
    from stn_deploy.export.onnx_export import export_module
    from stn_deploy.runtime import OrtSession

    path = prebuilt.get("ort-plugin") or prebuilt.get("ort-plugin-py")
    if path is None:
        path = export_module(model, shape, workdir / "ort-plugin.onnx", flavour="plugin").path
        prebuilt["ort-plugin"] = path
    if name == "ort-plugin":
        return OrtSession(path, threads=threads)
    from stn_deploy.plugins import ort_ops

    return OrtSession(path, threads=threads, session_hooks=[ort_ops.register],
                      plugin_route="python")


def run_bench(
    model,
    input_shape: Sequence[int],
    *,
    backends: Sequence[str] = BACKENDS,
    batch_sizes: Sequence[int] = DEFAULT_BATCHES,
    min_time: float = 1.0,
    threads: int | None = None,
    seed: int = 0,
    prebuilt: dict | None = None,
):
    """Measure every backend at every batch size; returns a list of BenchRow.

    ``prebuilt`` maps an ONNX backend name ('ort', 'ort-plugin', 'ort-default') to a file
    already exported.
    """
    from stn_deploy.runtime.bench import BenchRow, measure_interleaved

    shape = tuple(int(d) for d in input_shape[-3:])
    rng = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stn-bench-") as tmp:
        opened = _sessions(model, shape, backends, Path(tmp), threads, dict(prebuilt or {}))
        live = {k: v for k, v in opened.items() if not isinstance(v, str)}
        for name, err in opened.items():
            if isinstance(err, str):
                rows += [BenchRow(name, b, error=err) for b in batch_sizes]
        for batch in batch_sizes:
            x = rng.random((batch, *shape), dtype=np.float32)
            for name, stats in measure_interleaved(live, x, min_time=min_time).items():
                if isinstance(stats, str):
                    rows.append(BenchRow(name, batch, error=stats))
                else:
                    rows.append(BenchRow(name, batch, stats=stats))
        for session in live.values():
            session.close()
    return rows


def check_targets(rows) -> list[dict]:
    """Each target with the measured speed-up and whether it is met (None: not measured)."""
    from stn_deploy.runtime.bench import speedup

    results = []
    for backend, baseline, batch, need in TARGETS:
        got = speedup(rows, backend, baseline, batch)
        results.append({
            "backend": backend, "baseline": baseline, "batch": batch, "target": need,
            "speedup": got, "met": None if got is None else got >= need,
        })
    return results


def format_targets(results: list[dict]) -> str:
    lines = []
    for t in results:
        got = "not measured" if t["speedup"] is None else f"{t['speedup']:.2f}x"
        verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(
            f"target {t['backend']} vs {t['baseline']} at batch {t['batch']}: "
            f">= {t['target']:.1f}x, measured {got} ({verdict})"
        )
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    from stn_deploy.export.loading import load_checkpoint
    from stn_deploy.runtime.bench import environment, format_table, plot_rows, save_record

    loaded = load_checkpoint(args.checkpoint)
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    backends = [b for b in args.backends.split(",") if b]
    rows = run_bench(loaded.model, loaded.input_shape, backends=backends, batch_sizes=batches,
                     min_time=args.min_time, threads=args.threads)
    print(format_table(rows))
    targets = check_targets(rows)
    print(format_targets(targets))
    if args.out:
        record = {
            "model": {"checkpoint": str(args.checkpoint), "name": loaded.name,
                      "arch": loaded.config.get("arch"), "input_shape": list(loaded.input_shape)},
            # other processes on a small machine skew the numbers: keep the load with them
            "environment": {**environment(), "load_avg_before": load_before},
            "settings": {"batch_sizes": batches, "backends": backends,
                         "min_time_s": args.min_time, "threads": args.threads},
            "rows": [r.to_dict() for r in rows],
            "targets": targets,
        }
        print(f"wrote {save_record(record, args.out)}")
    if args.plot:
        print(f"wrote {plot_rows(rows, args.plot, title=f'{loaded.name} on CPU')}")
    return 0
