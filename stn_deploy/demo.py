"""The ``demo`` subcommand: a shipped checkpoint through export, check, verify, bench, figure.

The demo is a list of step functions (:data:`STEPS`); each takes the shared :class:`DemoState`,
does one thing, and returns its status line, or raises :class:`Skipped` with the reason. Adding
a stage (TensorRT, serving) is one function appended to the list.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "run_demo", "STEPS", "DemoState", "Skipped", "served_flavour"]

DEFAULT_CHECKPOINT = "tutorial-R"
DEFAULT_OUT = "out/demo"
FIGURE_SAMPLES = 12
BENCH_BATCHES = (1, 64)
SERVE_REQUESTS = 16


class Skipped(Exception):
    """A step that cannot run here; its message says why."""


@dataclass
class DemoState:
    """What the steps share: inputs, and what each step produced for the next ones."""

    checkpoint: str
    out: Path
    bench_time: float = 0.3
    loaded: Any = None
    exports: dict[str, Any] = field(default_factory=dict)  # flavour -> ExportResult
    verified: dict[str, Any] = field(default_factory=dict)  # flavour -> VerifyResult
    data: tuple[np.ndarray, np.ndarray] | None = None
    figure: Path | None = None
    bench_rows: list = field(default_factory=list)


def step_load(state: DemoState) -> str:
    from stn_deploy.export.loading import load_checkpoint

    state.loaded = load_checkpoint(state.checkpoint)
    cfg = state.loaded.config
    acc = cfg.get("metrics", {}).get("test_accuracy")
    trained = f", trained test accuracy {acc:.2%}" if isinstance(acc, float) else ""
    return (
        f"checkpoint {state.loaded.name}: {cfg.get('arch')} on {state.loaded.dataset}/"
        f"{state.loaded.distortion}, input {state.loaded.input_shape}{trained}"
    )


def step_export_standard(state: DemoState) -> str:
    from stn_deploy.export.onnx_export import export_module

    result = export_module(
        state.loaded.model, state.loaded.input_shape, state.out / "model.onnx",
        extra_outputs=("theta", "warped"),
    )
    state.exports["standard"] = result
    return result.summary()


def _plugin_ready() -> str | None:
    """None when the plugin flavour can be exported and run on ONNX Runtime, else why not."""
    for name in ("stn_deploy.export.plugin_flavour", "stn_deploy.plugins.ort_ops"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{name} is not in this build"
    return None


def step_export_plugin(state: DemoState) -> str:
    from stn_deploy.export.onnx_export import export_module

    why = _plugin_ready()
    if why:
        raise Skipped(f"plugin flavour: {why}")
    result = export_module(
        state.loaded.model, state.loaded.input_shape, state.out / "model.plugin.onnx",
        flavour="plugin", extra_outputs=("theta", "warped"),
    )
    state.exports["plugin"] = result
    return result.summary()


def step_verify(state: DemoState) -> str:
    from stn_deploy.export.verify import load_test_split, verify

    state.data = load_test_split(state.loaded.dataset, state.loaded.distortion)
    lines = []
    for flavour, result in state.exports.items():
        v = verify(state.loaded.model, result.path, *state.data, backend="ort")
        state.verified[flavour] = v
        lines.append(f"{flavour}: {v.summary()}")
    return "\n    ".join(lines)


def step_bench(state: DemoState) -> str:
    from stn_deploy.bench import run_bench
    from stn_deploy.runtime.bench import format_table

    prebuilt = {"ort": state.exports["standard"].path}
    backends = ["torch", "ort", "ort-default"]
    if "plugin" in state.exports:
        prebuilt["ort-plugin"] = state.exports["plugin"].path
        backends.insert(2, "ort-plugin")
    state.bench_rows = run_bench(
        state.loaded.model, state.loaded.input_shape, backends=backends,
        batch_sizes=BENCH_BATCHES, min_time=state.bench_time, prebuilt=prebuilt,
    )
    return ("CPU latency (ort = ours, ort-plugin = ours with our CPU kernels for the plugin nodes, "
            "ort-default = plain opset-20 export)\n") + "\n".join(
        "    " + line for line in format_table(state.bench_rows).splitlines()
    )


def served_flavour(state: DemoState) -> tuple[str, str]:
    """The flavour the serve step uses, and why: the faster ONNX Runtime flavour in the bench
    step at its largest batch (what a loaded server runs), else the standard flavour."""
    largest = max(BENCH_BATCHES)
    p50 = {r.backend: r.stats.p50_ms for r in state.bench_rows
           if r.batch == largest and r.stats is not None}
    if "plugin" not in state.exports or "ort-plugin" not in p50 or "ort" not in p50:
        return "standard", "the plugin flavour was not measured"
    faster = "plugin" if p50["ort-plugin"] < p50["ort"] else "standard"
    return faster, (f"faster at batch {largest}: plugin {p50['ort-plugin']:.3f} ms, standard "
                    f"{p50['ort']:.3f} ms")


def _figure(inputs, rows: dict[str, np.ndarray], path: Path, title: str, labels=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input", *rows]
    images = [inputs, *rows.values()]
    n = len(inputs)
    fig, axes = plt.subplots(len(names), n, figsize=(n * 0.9 + 1.2, len(names) * 0.95 + 0.5),
                             squeeze=False)
    for r, (name, batch) in enumerate(zip(names, images)):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(np.clip(batch[j, 0], 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
    for j, label in enumerate(labels if labels is not None else []):
        axes[0, j].set_title(str(label), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def step_figure(state: DemoState) -> str:
    import torch

    from stn_deploy.export.onnx_export import _ExportWrapper
    from stn_deploy.runtime import open_session

    images = state.data[0]
    # evenly spread over the split (it may be ordered by class)
    x = images[np.linspace(0, len(images) - 1, FIGURE_SAMPLES).astype(int)]
    with open_session(state.exports["standard"].path, "ort") as session:
        outputs = session.infer({"input": x})
    onnx_warped = outputs["warped"]
    truth = state.data[1][np.linspace(0, len(images) - 1, FIGURE_SAMPLES).astype(int)]
    labels = [f"{t} -> {p}" for t, p in zip(truth, outputs["logits"].argmax(1))]
    wrapper = _ExportWrapper(state.loaded.model, ("warped",)).eval()
    with torch.inference_mode():
        torch_warped = wrapper(torch.from_numpy(x))[1].numpy()
    c = x.shape[1]  # with several transformers, show the first one's image
    rows = {"PyTorch ST": torch_warped[:, :c], "ONNX Runtime ST": onnx_warped[:, :c]}
    err = float(np.abs(onnx_warped - torch_warped).max())
    state.figure = _figure(
        x, rows, state.out / "rectification.png",
        f"{state.loaded.name}: distorted test digits and the spatial transformer's output "
        f"(max |ONNX - PyTorch| = {err:.2g}); titles: label -> ONNX prediction",
        labels,
    )
    return f"wrote {state.figure} (warped images differ by at most {err:.2g})"


def step_tensorrt(state: DemoState) -> str:
    from stn_deploy.export.engine_demo import demo_trt_step, trt_available

    ok, why = trt_available()
    if not ok:
        raise Skipped(f"TensorRT: {why}")
    paths = {flavour: result.path for flavour, result in state.exports.items()}
    return demo_trt_step(paths, state.out / "trt", checkpoint=state.checkpoint)


def step_serve(state: DemoState) -> str:
    from stn_deploy.serve import demo_serve

    images, labels = state.data
    # spread over the split (it may be ordered by class), as real traffic would be
    pick = np.linspace(0, len(images) - 1, SERVE_REQUESTS).astype(int)
    # the server's start/stop lines would interleave with the demo's own report
    quiet = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "stn_deploy.runtime")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        flavour, why = served_flavour(state)
        result = demo_serve(
            state.exports[flavour].path, name=state.loaded.name, n_requests=SERVE_REQUESTS,
            backend="ort", echo=False, images=images[pick], labels=labels[pick],
        )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    if not result["matches"]:
        raise RuntimeError("served answers differ from the local ONNX Runtime session")
    lat = result["latency_ms"]
    acc = result.get("accuracy")
    acc_text = "" if acc is None else f", accuracy {acc:.0%}"
    return (
        f"{flavour} flavour ({why}); "
        f"{SERVE_REQUESTS} KServe v2 requests via tritonclient to {result['url']}: "
        f"answers {result['answers']} match the local session{acc_text}; "
        f"latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
    )


STEPS: list[tuple[str, Callable[[DemoState], str]]] = [
    ("load", step_load),
    ("export standard", step_export_standard),
    ("export plugin", step_export_plugin),
    ("verify", step_verify),
    ("bench", step_bench),
    ("figure", step_figure),
    ("tensorrt", step_tensorrt),
    ("serve", step_serve),
]


def summary_line(state: DemoState) -> str:
    v = state.verified.get("standard")
    if v is None:
        return f"demo incomplete: {state.checkpoint} was not verified"
    acc_t = "n/a" if v.accuracy_torch is None else f"{v.accuracy_torch:.2%}"
    acc_o = "n/a" if v.accuracy_backend is None else f"{v.accuracy_backend:.2%}"
    verdict = "OK" if all(state.verified.values()) else "FAILED"
    return (
        f"demo {verdict}: {state.loaded.name} accuracy torch {acc_t}, onnxruntime {acc_o}, "
        f"top-1 agreement {v.top1_agreement:.2%}, max abs err {v.max_abs_err:.2g} (n={v.n})"
    )


def run_demo(state: DemoState, steps=STEPS, echo=print) -> int:
    """Run ``steps`` in order, echoing one status block per step; returns the exit code."""
    start = time.perf_counter()
    for i, (name, fn) in enumerate(steps, 1):
        t0 = time.perf_counter()
        try:
            line = fn(state)
        except Skipped as why:
            echo(f"[{i}/{len(steps)}] {name}: skipped: {why}")
            continue
        echo(f"[{i}/{len(steps)}] {name} ({time.perf_counter() - t0:.1f}s): {line}")
    echo(f"total {time.perf_counter() - start:.1f}s")
    echo(summary_line(state))
    return 0 if state.verified and all(state.verified.values()) else 1


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="checkpoint -> ONNX -> check -> verify -> bench -> figure -> TensorRT -> serve"
    )
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"shipped name or directory (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--bench-time", type=float, default=0.3,
                   help="seconds per backend and batch size in the bench step")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    state = DemoState(checkpoint=args.checkpoint, out=Path(args.out), bench_time=args.bench_time)
    return run_demo(state)
