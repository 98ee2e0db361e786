"""One command for a machine with an NVIDIA GPU and TensorRT: build, test, benchmark, record.

    python bench/trt_check.py            (what `make trt-check` runs)

1. reports the GPU, driver, TensorRT, CUDA binding, torch and ONNX Runtime versions;
2. exports the tutorial-R checkpoint in both flavours (standard: TensorRT's built-in GridSample
   layer; plugin: our stn plugin) and both precisions, and builds an engine for each (the plugin
   flavour needs the plugin library: `stn-deploy plugins build`, or $STN_PLUGIN_LIB);
3. runs the tensorrt-marked tests (`pytest -m tensorrt`);
4. checks every backend's logits against PyTorch on the test split, then times TensorRT built-in
   vs TensorRT plugin vs ONNX Runtime vs PyTorch eager over batch sizes with
   ``stn_deploy.runtime.bench.measure_interleaved`` (p50/p90/p99 of a synchronous numpy-in /
   numpy-out call, so host<->device copies count for every backend);
5. writes everything to bench/results/trt-check-<gpu>-<date>.json (+ .png) and prints a table.

It exits 2 without a GPU or TensorRT, saying why. Written for GPU machines; it has not been run
in this repository's CI (no GPU there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CHECKPOINT = ROOT / "models" / "checkpoints" / "tutorial-R"
BATCHES = (1, 8, 32, 128, 256)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    import onnxruntime as ort
    import torch

    from stn_deploy import __version__
    from stn_deploy.runtime.cuda_util import load_cuda
    from stn_deploy.runtime.trt_module import flavour_of, import_tensorrt

    trt = import_tensorrt()

    cuda = load_cuda(0)
    info = cuda.info()
    query = "--query-gpu=name,driver_version,memory.total"
    smi = _run(["nvidia-smi", query, "--format=csv,noheader"])
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": info.name,
        "compute_capability": info.compute_capability,
        "nvidia_smi": smi.splitlines()[0] if smi else None,
        "cuda_driver": info.driver,
        "cuda_binding": cuda.binding,
        "tensorrt": trt.__version__,
        "tensorrt_module": flavour_of(trt).module,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "stn_deploy": __version__,
        "python": platform.python_version(),
        "git": _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or None,
    }


def plugin_library(report) -> Path | None:
    from stn_deploy.runtime.engine_meta import locate_plugin_library

    path, _ = locate_plugin_library()
    if path is None:
        report("plugin library not found; trying `stn-deploy plugins build`")
        subprocess.run([sys.executable, "-m", "stn_deploy.cli", "plugins", "build"], check=False)
        path, tried = locate_plugin_library()
        if path is None:
            report(f"  still none (tried {', '.join(tried)}): the plugin flavour is skipped")
    return path


def export_and_build(work: Path, plugin: Path | None, max_batch: int, report) -> dict:
    """{(flavour, precision): engine path} for every flavour/precision that builds here."""
    from stn_deploy.errors import StnDeployError
    from stn_deploy.export.engine import build_engine
    from stn_deploy.export.onnx_export import export_checkpoint

    engines, onnx_files, failures = {}, {}, {}
    for flavour in ("standard", "plugin") if plugin else ("standard",):
        for precision in ("fp32", "fp16"):
            src = work / f"tutorial-R-{flavour}-{precision}.onnx"
            engine = work / f"tutorial-R-{flavour}-{precision}.engine"
            report(f"export {src.name}")
            try:
                export_checkpoint(CHECKPOINT, src, flavour=flavour, precision=precision)
                onnx_files[flavour, precision] = src
                build_engine(src, engine, precision=precision, plugin_lib=plugin,
                             max_batch=max_batch, timing_cache=work / "timing.cache",
                             report=report)  # fmt: skip
            except StnDeployError as exc:  # recorded in the JSON, the other variants go on
                report(f"  {flavour}/{precision} failed: {exc}")
                failures[f"{flavour}-{precision}"] = str(exc)
                continue
            engines[flavour, precision] = engine
    return {"engines": engines, "onnx": onnx_files, "failures": failures}


def run_tests(report) -> dict:
    report("pytest -m tensorrt")
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-m", "tensorrt", "-q", "-rs", str(ROOT / "tests")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    tail = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    summary = tail[-1] if tail else done.stdout[-300:]
    returncode = done.returncode
    if returncode == 0 and " passed" not in summary:
        # Everything skipped: the skip reasons are printed above (no CUDA torch, no plugin...).
        report("no tensorrt test ran; see the skip reasons above")
        returncode = 1
    return {"returncode": returncode, "summary": summary,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def sessions(built: dict, loaded):
    """name -> zero-argument factory of an open Session."""
    import onnxruntime as ort

    from stn_deploy.runtime import OrtSession, TensorSpec, TorchSession, open_session

    out = {}
    for (flavour, precision), engine in built["engines"].items():
        label = "builtin" if flavour == "standard" else "plugin"
        out[f"trt-{label}-{precision}"] = lambda e=engine: open_session(e, "trt")
    gpu_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["CUDAExecutionProvider"] * gpu_ep + ["CPUExecutionProvider"]
    ort_name = "ort-cuda-fp32" if gpu_ep else "ort-cpu-fp32"
    standard = built["onnx"].get(("standard", "fp32"))
    if standard is not None:
        out[ort_name] = lambda: OrtSession(standard, providers=providers).open()
    import torch

    spec = TensorSpec("input", (None, *loaded.input_shape), "float32")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a CPU build of torch: say so
    out[f"torch-eager-{device}-fp32"] = lambda: TorchSession(loaded.model, [spec], ["logits"],
                                                             device=device).open()  # fmt: skip
    return out


def _parity(session, x: np.ndarray, reference: np.ndarray) -> dict:
    feeds = {session.input_names[0]: x.astype(session.inputs[0].dtype)}
    logits = session.infer(feeds)["logits"].astype(np.float32)
    return {
        "max_abs_err": float(np.abs(logits - reference).max()),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
    }


def benchmark(built: dict, x: np.ndarray, batches, min_time: float, report):
    """Parity with PyTorch on the test split, then interleaved timing of every backend."""
    from stn_deploy.export.loading import load_checkpoint
    from stn_deploy.export.verify import _torch_outputs
    from stn_deploy.runtime.bench import BenchRow, format_table, measure_interleaved

    loaded = load_checkpoint(CHECKPOINT)
    probe = x[:1024]
    reference = _torch_outputs(loaded.model, probe, ["logits"], 256)["logits"]
    live, parity, rows = {}, {}, []
    for name, factory in sessions(built, loaded).items():
        try:
            live[name] = factory()
            parity[name] = _parity(live[name], probe, reference)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot start is reported
            rows += [BenchRow(name, b, error=f"{type(exc).__name__}: {exc}") for b in batches]
    try:
        for batch in batches:
            xb = np.resize(x, (batch, *x.shape[1:]))  # repeats the split if it is too small
            for name, stats in measure_interleaved(live, xb, min_time=min_time).items():
                error = stats if isinstance(stats, str) else None
                rows.append(BenchRow(name, batch, stats=None if error else stats, error=error))
    finally:
        for session in live.values():
            session.close()
    baseline = next((n for n in live if n.startswith("torch")), "torch")
    report(format_table(rows, baseline=baseline))
    for name, p in parity.items():
        report(f"{name:22s} vs PyTorch: max|err| {p['max_abs_err']:.2e}, "
               f"top-1 agreement {p['top1_agreement']:.2%}")  # fmt: skip
    record = {"parity_vs_torch": parity, "rows": [r.to_dict() for r in rows], "baseline": baseline}
    return record, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per backend/batch")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "trt-check")
    args = parser.parse_args(argv)
    from stn_deploy.export.engine_demo import trt_available

    ok, why = trt_available()
    if not ok:
        print(f"trt-check needs TensorRT and an NVIDIA GPU: {why}", file=sys.stderr)
        return 2
    if not (CHECKPOINT / "config.json").is_file():
        print(f"checkpoint {CHECKPOINT} is missing", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env, indent=2))
    plugin = plugin_library(print)
    built = export_and_build(args.work, plugin, max(args.batches), print)
    tests = {"skipped": True} if args.skip_tests else run_tests(print)

    from stn_deploy.export.loading import load_checkpoint
    from stn_deploy.export.verify import load_test_split

    loaded = load_checkpoint(CHECKPOINT)
    x, _ = load_test_split(loaded.dataset, loaded.distortion)
    results, rows = benchmark(built, x, args.batches, args.min_time, print)
    record = {
        "environment": env,
        "plugin_library": str(plugin) if plugin else None,
        "engines": {f"{f}-{p}": str(e) for (f, p), e in built["engines"].items()},
        "build_failures": built["failures"],
        "tests": tests,
        "results": results,
    }
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
    out = RESULTS / f"trt-check-{slug}-{env['date'][:10]}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    from stn_deploy.runtime.bench import plot_rows

    print(f"wrote {plot_rows(rows, out.with_suffix('.png'), title=env['gpu'])}")
    return 0 if tests.get("returncode", 0) == 0 and not built["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
