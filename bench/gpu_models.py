"""Whole-model latency on a GPU without TensorRT: eager, torch.compile, our kernels swapped in.

    python bench/gpu_models.py --out bench/results        # on a CUDA machine (gpu_machine.sh)
    python bench/gpu_models.py --dry-run --out /tmp/gm     # anywhere: the CPU, tiny rounds

Models: the shipped tutorial-R, st-cnn-affine-R and st-cnn-tps-R, and the realistic-STN test
library's OCR-style TPS rectifier + recogniser (ocr-tps, 3x32x100), at batch 1 and 64, in
float32 and, where the model runs in it, float16 (``model.half()``). Configurations, each
compared with eager at the same dtype:

- eager; eager+graph: the whole forward captured in one torch.cuda.CUDAGraph and replayed;
- compile: torch.compile, default mode; compile-ro: mode="reduce-overhead" (inductor's graphs);
- ours: eager with our kernels swapped in (bench/gpu_swap.py) through the PyTorch CUDA
  extension bench/gpu_check.py builds; ours+graph: that forward captured in a CUDA graph.

Latency: CUDA events around each call on an idle GPU (host launch cost included), median per
round, median of interleaved rounds. GPU time: the forward captured 10 times in one graph and
replayed (launch gaps removed). TF32 is off, so float32 means float32. torch.compile time is
counted and capped (--compile-budget-s), combos not started within --budget-s are listed as
skipped, and the JSON is rewritten after every combo, so a killed run keeps what it measured.

``--dry-run`` runs the same table on the CPU: the CPU build of the kernels instead of the
extension and a wall clock instead of events. Skipped there, and said so in the JSON: CUDA
graphs (eager+graph, ours+graph, compile-ro, GPU times) and inductor (compile runs dynamo's
capture with backend="eager"; inductor takes ~30 s per model on 2 cores); batch 64 becomes 8.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import importlib.util
import json
import re
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from gpu_backend import ROOT, Backend, build_extension
from gpu_models_report import CONFIGS, ComboResult, ConfigResult, print_table, targets
from gpu_swap import OurKernels, OurSampling, swap_warps
from gpu_timing import graph_us, latency_us
from torch._dynamo.utils import counters

ZOO = ("tutorial-R", "st-cnn-affine-R", "st-cnn-tps-R")
OCR = "ocr-tps"
MODELS = (*ZOO, OCR)
BATCHES, DRY_BATCHES = (1, 64), (1, 8)
# Gate: max |config - eager| <= TOL[dtype] * max(1, max |eager|), eager at the same dtype.
TOL = {"float32": 1e-4, "float16": 2e-2}
DTYPES = {"float32": torch.float32, "float16": torch.float16}
FP16_WHY = {OCR: "its forward builds the TPS system's zero block with .float(), so in half "
                 "precision its bmm mixes float16 and float32"}


def _import_realistic():
    path = ROOT / "tests" / "realistic_stns.py"
    loaded = sys.modules.get("realistic_stns")
    if loaded is not None and Path(loaded.__file__).resolve() == path:
        return loaded  # the test suite's copy: its classes, not a second set
    spec = importlib.util.spec_from_file_location("realistic_stns", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def load(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """(the model in float32 on the CPU, eval mode; its input shape without the batch)."""
    if name in ZOO:
        from stn_deploy.models import load_model

        loaded = load_model(name)
        return loaded.model.eval(), tuple(loaded.input_shape)
    realistic = _import_realistic()
    case = next((c for c in realistic.CASES if c.name == name), None)
    if case is None:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return realistic.make(case), tuple(case.input_shape)


def eager_scope(model, x, device) -> tuple[contextlib.AbstractContextManager, str | None]:
    """How the model runs on ``device``: as it is, or under ``torch.device(device)``.

    A module written for the CPU may make tensors without a device inside forward (a
    ``torch.zeros(n, 3, 2)``); torch.device as a context (torch.set_default_device's mechanism)
    runs it unchanged. Returns the scope factory and, when one was needed, why.
    """
    try:
        model(x)
        return contextlib.nullcontext, None
    except RuntimeError as first:
        with torch.device(device):
            model(x)  # raises if the default device does not help either
        return (lambda: torch.device(device)), f"{type(first).__name__}: {first}"[:200]


def _compare(got: torch.Tensor, ref: torch.Tensor, dtype: str) -> tuple[float, float, bool]:
    diff = (got.double() - ref.double()).abs()
    err = float(diff.max()) if torch.isfinite(got).all() else float("inf")
    tol = TOL[dtype] * max(1.0, float(ref.double().abs().max()))
    return err, tol, err <= tol


def _graphed(forward):
    """forward captured in one CUDA graph: a call replays it and returns its static output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()

    def replay():
        graph.replay()
        return out

    return replay


class Bench:
    """One run of the table: settings, kernels, budgets, results."""

    def __init__(self, args: argparse.Namespace, backend: Backend, t0: float) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = backend.device
        self.kernels = OurKernels(backend)
        self.t0 = t0  # the budget counts from the script's start (extension build included)
        self.compile_spent = 0.0
        self.failures: list[str] = []
        self.gen = torch.Generator().manual_seed(args.seed)

    # ---- building the configurations -----------------------------------------------------

    def _forwards(self, name, model, x, scope) -> dict:
        """config -> (a no-argument forward, seconds it took to set up[, note]) or why not."""
        def run(fn):
            def forward():
                with scope():
                    return fn(x)
            return forward

        out = {"eager": (run(model), 0.0)}
        if name in ZOO:
            swapped, count = swap_warps(model, self.kernels)
            out["ours"] = (run(swapped), 0.0) if count else "no Warp module to swap"
        else:
            def with_mode(inp):
                with OurSampling(self.kernels):
                    return model(inp)
            out["ours"] = (run(with_mode), 0.0)
        for config, mode in (("compile", None), ("compile-ro", "reduce-overhead")):
            out[config] = self._compile(model, run, mode)
        return out

    def _compile(self, model, run, mode):
        if self.args.no_compile:
            return "--no-compile"
        if self.dry and mode:
            return "dry run: reduce-overhead is CUDA graphs, none on the CPU"
        if self.compile_spent >= self.args.compile_budget_s:
            return f"compile budget spent ({self.compile_spent:.0f} of " \
                   f"{self.args.compile_budget_s:.0f} s)"
        kwargs = {"backend": "eager"} if self.dry else ({"mode": mode} if mode else {})
        skips = counters["inductor"]["cudagraph_skips"]
        t0 = time.perf_counter()
        try:
            fn = run(torch.compile(model, dynamic=False, **kwargs))
            if mode == "reduce-overhead":
                inner = fn

                def fn():
                    torch.compiler.cudagraph_mark_step_begin()  # outputs of a replay are reused
                    return inner()
            for _ in range(4):  # compile; reduce-overhead: warm-up, record, replay
                fn()
            self._sync()
        except Exception as exc:  # torch.compile's failure is reported, not ours to fail on
            return f"torch.compile failed: {type(exc).__name__}: {exc}"[:300]
        finally:
            self.compile_spent += time.perf_counter() - t0
        skipped = counters["inductor"]["cudagraph_skips"] - skips
        note = (f"inductor skipped CUDA graphs {skipped} time(s) (its log says why): this row "
                "ran without them" if mode and skipped else None)
        return fn, time.perf_counter() - t0, note

    def _graph_configs(self, forwards: dict) -> None:
        for base in ("eager", "ours"):
            entry = forwards.get(base)
            if self.dry:
                forwards[f"{base}+graph"] = "dry run: no CUDA graphs on the CPU"
            elif isinstance(entry, str):
                forwards[f"{base}+graph"] = f"no {base} forward: {entry}"
            else:
                t0 = time.perf_counter()
                try:
                    forwards[f"{base}+graph"] = (_graphed(entry[0]), time.perf_counter() - t0)
                except RuntimeError as exc:
                    forwards[f"{base}+graph"] = f"capture failed: {exc}"[:300]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # ---- one combo -----------------------------------------------------------------------

    def combo(self, name, base, shape, batch, dtype) -> ComboResult:
        res = ComboResult(name, batch, dtype, (batch, *shape))
        x = torch.rand(batch, *shape, generator=self.gen).to(self.device, DTYPES[dtype])
        model = copy.deepcopy(base).to(self.device, DTYPES[dtype])
        try:
            scope, res.needs_default_device = eager_scope(model, x, self.device)
        except RuntimeError as exc:
            why = FP16_WHY.get(name, "") if dtype == "float16" else ""
            res.skipped = f"eager fails in {dtype}: {type(exc).__name__}: {exc}"[:240]
            res.skipped += f" ({why})" if why else ""
            return res
        with scope():
            ref = model(x).clone()
        res.output_shape = tuple(ref.shape)
        ref32 = None
        if dtype == "float16":  # the same half-rounded input through the float32 model
            with scope():
                ref32 = copy.deepcopy(base).to(self.device)(x.float())
            res.fp16_vs_fp32_eager = float((ref.double() - ref32.double()).abs().max())
        if not torch.isfinite(ref).all():
            res.skipped = f"eager output in {dtype} is not finite"
            return res
        forwards = self._forwards(name, model, x, scope)
        self._graph_configs(forwards)
        results = {c: ConfigResult(c) for c in CONFIGS}
        ready = self._check(f"{name} b{batch} {dtype}", forwards, results, ref, ref32, dtype)
        if "ours" in ready:
            results["ours"].kernels = self.kernels.per_forward(ready["ours"])
            results["ours+graph"].kernels = results["ours"].kernels
        self._time(ready, results)
        res.configs = [results[c] for c in CONFIGS]
        return res

    def _check(self, label, forwards, results, ref, ref32, dtype) -> dict:
        """Each configuration's output against eager's; returns the configurations to time."""
        ready = {}
        for config, entry in forwards.items():
            r = results[config]
            if isinstance(entry, str):
                r.skipped = entry
                continue
            ready[config], r.setup_s = entry[0], round(entry[1], 2)
            r.note = entry[2] if len(entry) > 2 else None
            self._sync()
            got = entry[0]().clone()
            r.max_abs_err, r.tolerance, r.ok = _compare(got, ref, dtype)
            if ref32 is not None:
                r.max_abs_err_vs_fp32 = float((got.double() - ref32.double()).abs().max())
            if not r.ok:
                self.failures.append(f"{label} {config}: max abs err {r.max_abs_err:.3g} > "
                                     f"tolerance {r.tolerance:.3g}")
        return ready

    def _time(self, ready: dict, results: dict) -> None:
        names = list(ready)
        for rnd in range(self.args.rounds):  # interleaved, and the order rotates each round
            for config in names[rnd % len(names):] + names[:rnd % len(names)]:
                results[config].rounds_us.append(
                    round(latency_us(ready[config], self.device, self.args.iters), 2))
        for config in names:
            results[config].latency_us = round(statistics.median(results[config].rounds_us), 2)
        if self.dry:
            return
        for base in ("eager", "compile", "ours"):  # a +graph config replays the same kernels
            if base not in ready:
                continue
            try:
                us = graph_us(ready[base], self.device, calls=10, replays=10)
            except RuntimeError as exc:  # a timing that fails costs its cell, not the combo
                us, results[base].note = None, f"GPU time: {type(exc).__name__}: {exc}"[:200]
            results[base].gpu_us = None if us is None else round(us, 2)
            if f"{base}+graph" in ready:
                results[f"{base}+graph"].gpu_us = results[base].gpu_us

    # ---- the table -----------------------------------------------------------------------

    def plan(self) -> list[tuple[str, int, str]]:
        """Batch 1 first (the target's), then float16, then the rest: what a budget cuts last."""
        batches = [b if b == 1 or not self.dry else DRY_BATCHES[1] for b in self.args.batches]
        return [(m, b, d) for b in batches for d in self.args.dtypes for m in self.args.models]

    def run(self, write) -> list[ComboResult]:
        models = {m: load(m) for m in self.args.models}
        combos = []
        for name, batch, dtype in self.plan():
            spent = time.perf_counter() - self.t0
            if spent > self.args.budget_s:
                combos.append(ComboResult(name, batch, dtype, skipped=(
                    f"time budget spent ({spent:.0f} of {self.args.budget_s:.0f} s)")))
                continue
            torch._dynamo.reset()  # one fresh compile per combo, no recompile-limit surprises
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    combos.append(self.combo(name, *models[name], batch, dtype))
            except Exception as exc:  # ours or a capture broke: report it, go on with the rest
                self.failures.append(f"{name} b{batch} {dtype}: {type(exc).__name__}: {exc}")
                combos.append(ComboResult(name, batch, dtype, skipped=f"error: {exc}"[:300]))
            print(f"  {name} batch {batch} {dtype}: {time.perf_counter() - t0:.1f} s", flush=True)
            write(combos, complete=False)
        return combos


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: CPU build, no graphs, dynamo-only compile, tiny rounds")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: "
                   + ", ".join(MODELS))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5; dry: 2)")
    p.add_argument("--iters", type=int, default=None, help="calls per round (20; dry: 2)")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="start no new combo this many seconds after the start")
    p.add_argument("--compile-budget-s", type=float, default=130.0,
                   help="compile no more after torch.compile took this long in all")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the extension")
    p.add_argument("--build-dir", type=Path, default=ROOT / "build" / "gpu_check_ext",
                   help="the extension's build folder (gpu_check.py's: built once, reused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in DTYPES for d in args.dtypes):
        p.error(f"--dtypes takes {', '.join(DTYPES)}")
    args.rounds = args.rounds or (2 if args.dry_run else 5)
    args.iters = args.iters or (2 if args.dry_run else 20)
    return args


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    from gpu_check import environment

    if args.dry_run:
        backend = Backend("cpu-build", torch.device("cpu"))
        torch.set_num_threads(1)  # steadier on a shared CPU, and the models are tiny
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device visible to torch; run on a GPU machine or pass --dry-run",
                  file=sys.stderr)
            return 2
        t_ext = time.perf_counter()
        ext = build_extension(args.build_dir, args.arch, args.verbose)
        print(f"loaded the CUDA extension in {time.perf_counter() - t_ext:.0f} s")
        backend = Backend("cuda-extension", torch.device("cuda"), ext)
        torch.backends.cudnn.allow_tf32 = False  # float32 convolutions in float32
        torch.backends.cuda.matmul.allow_tf32 = False
    bench = Bench(args, backend, t0)
    env = environment(backend.device, args.dry_run)
    device = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_models-{'dry-run-' if args.dry_run else ''}{device}-{stamp}.json"

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "build_dir")}
    settings |= {"tf32": False, "tolerance_x_max(1,|eager|)": TOL,
                 "compile_backend": ("eager (dry run: dynamo's capture, no inductor)"
                                     if args.dry_run else "inductor")}

    def write(combos, complete: bool) -> None:
        timing = {"compile_spent_s": round(bench.compile_spent, 1),
                  "elapsed_s": round(time.perf_counter() - bench.t0, 1)}
        report = {"environment": env, "backend": backend.name, "complete": complete,
                  "settings": settings | timing, "results": [asdict(c) for c in combos],
                  "failures": bench.failures, "targets": targets(combos, args.dry_run)}
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    combos = bench.run(write)
    write(combos, complete=True)
    print_table(combos, args.dry_run)
    if args.dry_run:
        print("dry run: compile = torch.compile(backend='eager'), dynamo's capture without "
              f"inductor; batch {BATCHES[1]} -> {DRY_BATCHES[1]}; the CPU build for ours")
    print(f"targets: {json.dumps(targets(combos, args.dry_run))}")
    print(f"torch.compile took {bench.compile_spent:.0f} s in all; "
          f"elapsed {time.perf_counter() - bench.t0:.0f} s")
    print(f"wrote {path}")
    for line in bench.failures:
        print(f"  FAIL {line}")
    print(f"gpu-models: {'FAIL' if bench.failures else 'PASS'} ({len(bench.failures)} failures)")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
