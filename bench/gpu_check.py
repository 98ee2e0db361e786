"""One-call GPU check of the GridSample kernels: build, correctness table, speed vs PyTorch.

    python bench/gpu_check.py --out bench/results          # on a CUDA machine (make gpu-check)
    python bench/gpu_check.py --dry-run --out /tmp/gc      # anywhere: CPU build, tiny sizes

On a GPU it builds the kernels as a PyTorch CUDA extension (the same .cu TensorRT runs),
checks them against F.grid_sample on CUDA over modes x paddings x align_corners x dtypes x
shapes (fp16 with fp16 tolerances) plus NaN/Inf/huge grids (against the CPU build: same code),
times fused affine, generic and projective kernels against PyTorch eager (affine_grid +
grid_sample) and torch.compile, reports achieved bandwidth against a device-to-device copy
measured in the same run, prints a table and writes JSON with device, driver and versions.
``--dry-run`` swaps the CUDA extension for the CPU build and CUDA events for a wall clock, so
the script's own logic (arguments, tables, JSON) can be exercised without a GPU.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gpu_backend import ROOT, Backend, build_extension, from_hwc8, to_hwc8
from gpu_timing import copy_bandwidth, graph_us, measure

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}  # fp16: one half-ulp of outputs up to ~2
# (N, C, H, W, Ho, Wo): non-square, up/down-sampling, C = 1, 3, 17, 64.
CHECK_SHAPES = ((2, 1, 9, 13, 17, 11), (3, 3, 16, 12, 8, 10), (1, 17, 7, 5, 12, 14),
                (2, 64, 10, 8, 6, 9))
# The cases: STN-sized and feature-map-sized.
BENCH_CASES = ((256, 1, 28, 28), (256, 1, 60, 60), (256, 3, 60, 60), (32, 64, 128, 128))
DRY_BENCH_CASES = ((8, 1, 28, 28), (2, 8, 32, 32))
SPECIAL = (float("nan"), float("inf"), -float("inf"), 1e10, -1e10, 3e38, 0.3, -0.7)


# ---- correctness -----------------------------------------------------------------------------


@dataclass
class CheckRow:
    op: str
    mode: str
    padding: str
    align_corners: bool
    dtype: str
    shape: tuple
    max_abs_err: float
    tolerance: float
    skipped_boundary_pixels: int = 0
    ok: bool = True
    rel_err: float = 0.0  # ||got - ref|| / ||ref||, the reference in float64


def _near_boundary(grid: torch.Tensor, in_hw, ac: bool, margin=1e-3) -> torch.Tensor:
    """Pixels within ``margin`` px of nearest's rounding boundary (fused grids may differ 1 ulp)."""
    g = grid.double()
    near = torch.zeros(g.shape[:3], dtype=torch.bool, device=g.device)
    for axis, size in ((0, in_hw[1]), (1, in_hw[0])):
        scale = (size - 1) / 2 if ac else size / 2
        u = (g[..., axis] + 1) * scale - (0 if ac else 0.5)
        near |= ((u - u.floor()) - 0.5).abs() < margin
    return near[:, None]


def _compare(got, want, tol, skip=None) -> tuple[float, float, int]:
    """(max abs error, relative L2 error, pixels skipped); inf when anything is not finite."""
    diff = (got.double() - want.double()).abs()
    skipped = 0
    if skip is not None:
        mask = skip.expand_as(diff)
        skipped = int(skip.sum())
        diff = torch.where(mask, torch.zeros_like(diff), diff)
    if not torch.isfinite(got).all():  # NaN poison left in place: an element never written
        return float("inf"), float("inf"), skipped
    rel = float(diff.norm() / want.double().norm().clamp_min(1e-30))
    return float(diff.max()), rel, skipped


def _inputs(shape, dtype, device, gen):
    n, c, h, w, ho, wo = shape
    x = (torch.rand(n, c, h, w, generator=gen) * 2 - 0.5).to(device, dtype)
    grid = (torch.rand(n, ho, wo, 2, generator=gen) * 2.6 - 1.3).to(device, dtype)
    theta = torch.empty(n, 2, 3).uniform_(-1.2, 1.2, generator=gen)
    theta[:, :, 2].uniform_(-0.5, 0.5, generator=gen)
    hom = torch.eye(3).repeat(n, 1, 1) + torch.empty(n, 3, 3).uniform_(-0.3, 0.3, generator=gen)
    hom[:, 2, :2] = torch.empty(n, 2).uniform_(-0.2, 0.2, generator=gen)
    hom[:, 2, 2] = 1.0
    return x, grid, theta.to(device), hom.to(device)


def _hwc8_cases(backend, x, coords, ref_grids, out_hw, mode, padding, ac):
    """The channels-last variant of the three ops, unpacked to NCHW for comparison."""
    xp = to_hwc8(x)
    c = x.shape[1]
    out = []
    for op, coord, ref, fused in zip(("grid", "affine", "projective"), coords, ref_grids,
                                     (False, True, True)):
        y = backend.hwc8(op, xp, coord.to(x.dtype) if op == "grid" else coord, c, out_hw, mode,
                         padding, ac)
        if y[..., c:].abs().sum() != 0:
            y = torch.full_like(y, float("nan"))  # padding channels must be written as 0
        out.append((f"{op}-hwc8", from_hwc8(y, c), ref, fused))
    return tuple(out)


def check_table(backend: Backend, dtypes, gen) -> list[CheckRow]:
    from stn_deploy.models.sampling import base_grid, projective_grid

    rows = []
    for dtype in dtypes:
        for shape in CHECK_SHAPES:
            n, c, h, w, ho, wo = shape
            x, grid, theta, hom = _inputs(shape, dtype, backend.device, gen)
            x64 = x.double()
            agrid = {ac: F.affine_grid(theta.double(), [n, c, ho, wo], align_corners=ac)
                     for ac in (False, True)}
            pgrid = {ac: projective_grid(hom, base_grid(ho, wo, ac).to(backend.device), (ho, wo))
                     for ac in (False, True)}
            for mode in MODES:
                for padding in PADDINGS:
                    for ac in (False, True):
                        cases = (
                            ("grid", backend.grid_sample(x, grid, mode, padding, ac),
                             grid.float(), False),
                            ("affine", backend.affine(x, theta, (ho, wo), mode, padding, ac),
                             agrid[ac], True),
                            ("projective", backend.projective(x, hom, (ho, wo), mode, padding, ac),
                             pgrid[ac], True),
                        )
                        if backend.ext is None or dtype == torch.float16:
                            cases += _hwc8_cases(backend, x, (grid, theta, hom),
                                                 (grid.float(), agrid[ac], pgrid[ac]),
                                                 (ho, wo), mode, padding, ac)
                        for op, got, ref_grid, fused in cases:
                            want = F.grid_sample(x64, ref_grid.double(), mode=mode,
                                                 padding_mode=padding, align_corners=ac)
                            skip = (_near_boundary(ref_grid, (h, w), ac)
                                    if fused and mode == "nearest" else None)
                            err, rel, skipped = _compare(got, want, TOL[dtype], skip)
                            rows.append(CheckRow(op, mode, padding, ac, str(dtype).split(".")[-1],
                                                 shape, err, TOL[dtype], skipped,
                                                 err < TOL[dtype], rel))
            if backend.device.type == "cuda":
                torch.cuda.synchronize()  # an asynchronous kernel fault surfaces at its shape
    return rows


def check_special(backend: Backend, gen) -> list[dict]:
    """NaN/Inf/huge grids: exact parity with the CPU build (same code); CUDA torch noted."""
    from stn_deploy.plugins import cpu

    vals = torch.tensor(SPECIAL)
    grid = torch.stack(torch.meshgrid(vals, vals[torch.randperm(len(vals), generator=gen)],
                                      indexing="xy"), dim=-1)[None].repeat(2, 1, 1, 1)
    x = torch.rand(2, 3, 6, 7, generator=gen)
    out = []
    for mode in MODES:
        for padding in PADDINGS:
            for ac in (False, True):
                got = backend.grid_sample(x.to(backend.device), grid.to(backend.device), mode,
                                          padding, ac).cpu()
                want = torch.from_numpy(cpu.grid_sample(x.numpy(), grid.numpy(), mode, padding,
                                                        ac))
                same = torch.allclose(got, want, atol=1e-5, rtol=0, equal_nan=True)
                torch_ref = F.grid_sample(x.to(backend.device), grid.to(backend.device),
                                          mode=mode, padding_mode=padding, align_corners=ac).cpu()
                torch_same = torch.allclose(got, torch_ref, atol=1e-5, rtol=0, equal_nan=True)
                out.append({"mode": mode, "padding": padding, "align_corners": ac,
                            "matches_cpu_build": bool(same),
                            "matches_torch_on_this_device": bool(torch_same),
                            "finite_outputs_in_range": bool(
                                got[torch.isfinite(got)].abs().max() <= 2 * x.abs().max()
                                if torch.isfinite(got).any() else True)})
    return out


# ---- timing ----------------------------------------------------------------------------------


@dataclass
class BenchRow:
    case: str
    dtype: str
    ours_fused_affine_us: float
    ours_generic_us: float
    ours_projective_us: float
    torch_eager_us: float
    torch_compile_us: float | None
    speedup_vs_eager: float
    speedup_vs_compile: float | None
    fused_gbps: float
    fused_pct_of_copy: float
    hwc8_fused_us: float | None = None
    hwc8_gbps: float | None = None
    hwc8_pct_of_copy: float | None = None
    # GPU time per call from a CUDA graph of 20 calls: launch gaps removed (None on the CPU)
    fused_graph_us: float | None = None
    eager_graph_us: float | None = None
    speedup_vs_eager_graph: float | None = None
    fused_graph_pct_of_copy: float | None = None
    notes: list = field(default_factory=list)


def _eager(x, theta, out_hw):
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _time_case(backend: Backend, tensors, out_hw, compiled, iters: int):
    """Median us of fused affine, generic, projective, eager and compiled on one case."""
    x, theta, hom, grid = tensors
    dev = backend.device
    notes = []
    fused = measure(lambda: backend.affine(x, theta, out_hw, "bilinear", "zeros", False), dev,
                    iters)
    generic = measure(lambda: backend.grid_sample(x, grid, "bilinear", "zeros", False), dev,
                      iters)
    proj = measure(lambda: backend.projective(x, hom, out_hw, "bilinear", "zeros", False), dev,
                   iters)
    eager = measure(lambda: _eager(x, theta, out_hw), dev, iters)
    graphs = (graph_us(lambda: backend.affine(x, theta, out_hw, "bilinear", "zeros", False), dev),
              graph_us(lambda: _eager(x, theta, out_hw), dev))
    comp = None
    if compiled:
        try:
            torch._dynamo.reset()  # one fresh compile per case, no recompile-limit surprises
            fn = torch.compile(_eager, dynamic=False)
            comp = measure(lambda: fn(x, theta, out_hw), dev, iters)
        except Exception as exc:  # torch.compile can fail on some setups: report, do not stop
            notes.append(f"torch.compile failed: {type(exc).__name__}: {exc}"[:300])
    return (fused, generic, proj, eager, comp), graphs, notes


def _time_hwc8(backend: Backend, x, theta, out_hw, iters: int, copy_gbps: float):
    """(us, GB/s, % of copy) of the fused affine kernel on kHWC8 fp16 tensors."""
    xp = to_hwc8(x)
    c = x.shape[1]
    def call():
        return backend.hwc8("affine", xp, theta, c, out_hw, "bilinear", "zeros", False)

    # GPU time from a graph where one can be captured: this row is about bandwidth, not launches.
    us = graph_us(call, backend.device) or measure(call, backend.device, iters)
    moved = (xp.numel() + x.shape[0] * out_hw[0] * out_hw[1] * xp.shape[-1]) * xp.element_size()
    gbps = moved / (us * 1e-6) / 1e9
    return round(us, 2), round(gbps, 1), round(100 * gbps / copy_gbps, 1)


def bench(backend: Backend, cases, dtypes, iters: int, copy_gbps: float, compile_: bool,
          gen) -> list[BenchRow]:
    rows = []
    dev = backend.device
    compiled = compile_
    for n, c, h, w in cases:
        for dtype in dtypes:
            x = torch.rand(n, c, h, w, generator=gen).to(dev, dtype)
            theta = (torch.tensor([[1.0, 0.1, 0.05], [-0.1, 0.9, 0.0]]).repeat(n, 1, 1)
                     + 0.05 * torch.randn(n, 2, 3, generator=gen)).to(dev, dtype)
            hom = torch.eye(3).repeat(n, 1, 1)
            hom[:, 2, :2] = 0.05
            hom = hom.to(dev, dtype)
            out_hw = (h, w)
            grid = F.affine_grid(theta.float(), [n, c, h, w], align_corners=False).to(dtype)
            times, graphs, notes = _time_case(backend, (x, theta, hom, grid), out_hw, compiled,
                                              iters)
            fused_g, eager_g = graphs
            fused, generic, proj, eager, comp = times
            moved = (x.numel() + n * c * h * w) * x.element_size() + theta.numel() * 4
            gbps = moved / (fused * 1e-6) / 1e9
            hwc = None
            if dtype == torch.float16 or backend.ext is None:
                hwc = _time_hwc8(backend, x, theta, out_hw, iters, copy_gbps)
            rows.append(BenchRow(
                case=f"N={n},C={c},{h}x{w}", dtype=str(dtype).split(".")[-1],
                ours_fused_affine_us=round(fused, 2), ours_generic_us=round(generic, 2),
                ours_projective_us=round(proj, 2), torch_eager_us=round(eager, 2),
                torch_compile_us=None if comp is None else round(comp, 2),
                speedup_vs_eager=round(eager / fused, 2),
                speedup_vs_compile=None if comp is None else round(comp / fused, 2),
                fused_gbps=round(gbps, 1), fused_pct_of_copy=round(100 * gbps / copy_gbps, 1),
                hwc8_fused_us=hwc[0] if hwc else None, hwc8_gbps=hwc[1] if hwc else None,
                hwc8_pct_of_copy=hwc[2] if hwc else None,
                fused_graph_us=_round(fused_g), eager_graph_us=_round(eager_g),
                speedup_vs_eager_graph=(round(eager_g / fused_g, 2) if fused_g and eager_g
                                        else None),
                fused_graph_pct_of_copy=(round(100 * moved / (fused_g * 1e-6) / 1e9 / copy_gbps, 1)
                                         if fused_g else None),
                notes=notes))
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# ---- report ----------------------------------------------------------------------------------


def environment(device: torch.device, dry_run: bool) -> dict:
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "dry_run": dry_run, "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), driver=_driver())
    else:
        env.update(device=f"CPU ({platform.processor() or platform.machine()})", driver=None)
    return env


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def targets(rows: list[BenchRow], dry_run: bool) -> dict:
    """The issue's targets: fused affine fp32 >= 2x eager at C=1..3; fp16 HWC8 >= 70% of copy."""
    if dry_run:
        return {"note": "dry run on the CPU build: these timings say nothing about GPU targets"}
    small = [r for r in rows if r.dtype == "float32" and re.search(r",C=[123],", r.case)]
    big = [r for r in rows if r.dtype == "float16" and r.hwc8_pct_of_copy is not None
           and int(re.search(r",C=(\d+),", r.case).group(1)) >= 64]
    return {
        "fused_affine_fp32_2x_eager_at_C<=3": {
            "met": bool(small) and all(r.speedup_vs_eager >= 2 for r in small),
            "speedups": {r.case: r.speedup_vs_eager for r in small}},
        "fp16_channels_last_70pct_copy_at_C>=64": {
            "met": bool(big) and all(r.hwc8_pct_of_copy >= 70 for r in big),
            "pct_of_copy": {r.case: r.hwc8_pct_of_copy for r in big}},
    }


def print_tables(checks: list[CheckRow], special: list[dict], rows: list[BenchRow],
                 copy_gbps: float) -> None:
    bad = [c for c in checks if not c.ok]
    worst = {}
    worst_rel = {}
    for c in checks:
        key = (c.op, c.dtype)
        worst[key] = max(worst.get(key, 0.0), c.max_abs_err)
        worst_rel[key] = max(worst_rel.get(key, 0.0), c.rel_err)
    print(f"correctness: {len(checks) - len(bad)}/{len(checks)} cases within tolerance "
          "(reference: F.grid_sample in float64)")
    for (op, dtype), err in sorted(worst.items()):
        tol = TOL[getattr(torch, dtype)]
        print(f"  {op:<11} {dtype:<8} worst max-abs-err {err:.3g} (tol {tol}), "
              f"worst relative L2 {worst_rel[(op, dtype)]:.3g}")
    for c in bad[:20]:
        print(f"  FAIL {asdict(c)}")
    sp_ok = sum(s["matches_cpu_build"] for s in special)
    print(f"NaN/Inf/huge grids: {sp_ok}/{len(special)} match the CPU build")
    print(f"device-to-device copy: {copy_gbps:.1f} GB/s")
    head = (f"{'case':<20}{'dtype':<9}{'fused':>9}{'generic':>9}{'proj':>9}{'eager':>9}"
            f"{'compile':>9}{'x eager':>9}{'x comp':>8}{'GB/s':>8}{'%copy':>7}{'hwc8':>9}"
            f"{'%copy':>7}")
    print(head)
    for r in rows:
        comp = f"{r.torch_compile_us:9.1f}" if r.torch_compile_us is not None else f"{'-':>9}"
        xc = f"{r.speedup_vs_compile:8.2f}" if r.speedup_vs_compile is not None else f"{'-':>8}"
        print(f"{r.case:<20}{r.dtype:<9}{r.ours_fused_affine_us:9.1f}{r.ours_generic_us:9.1f}"
              f"{r.ours_projective_us:9.1f}{r.torch_eager_us:9.1f}{comp}"
              f"{r.speedup_vs_eager:9.2f}{xc}{r.fused_gbps:8.1f}{r.fused_pct_of_copy:7.1f}"
              + (f"{r.hwc8_fused_us:9.1f}{r.hwc8_pct_of_copy:7.1f}" if r.hwc8_fused_us else ""))
    print("times in microseconds (median of per-call CUDA events); fused = STNAffineGridSample "
          "kernel (NCHW), eager = F.affine_grid + F.grid_sample, hwc8 = fused kernel on fp16 "
          "kHWC8 tensors (GPU time from a CUDA graph)")
    graphed = [r for r in rows if r.fused_graph_us is not None]
    if graphed:
        print(f"{'GPU time per call, CUDA graph of 20 calls':<29}{'fused':>9}{'eager':>9}"
              f"{'x eager':>9}{'%copy':>7}")
        for r in graphed:
            eager = f"{r.eager_graph_us:9.2f}" if r.eager_graph_us else f"{'-':>9}"
            ratio = f"{r.speedup_vs_eager_graph:9.2f}" if r.speedup_vs_eager_graph else f"{'-':>9}"
            print(f"{r.case:<20}{r.dtype:<9}{r.fused_graph_us:9.2f}{eager}{ratio}"
                  f"{r.fused_graph_pct_of_copy:7.1f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                   help="folder for the JSON report")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: CPU build and tiny sizes, to exercise the script itself")
    p.add_argument("--iters", type=int, default=50, help="timed iterations per measurement")
    p.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST for the extension, e.g. 9.0")
    p.add_argument("--build-dir", type=Path, default=ROOT / "build" / "gpu_check_ext")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--skip-check", action="store_true", help="timings only")
    p.add_argument("--seed", type=int, default=None, help="seed (default: fresh inputs)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed if args.seed is not None
                                        else int(np.random.SeedSequence().entropy % 2**63))
    if args.dry_run:
        backend = Backend("cpu-build", torch.device("cpu"))
        dtypes, cases, iters = (torch.float32,), DRY_BENCH_CASES, min(args.iters, 5)
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device visible to torch; run on a GPU machine or pass --dry-run",
                  file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        ext = build_extension(args.build_dir, args.arch, args.verbose)
        print(f"built the CUDA extension in {time.perf_counter() - t0:.0f} s")
        backend = Backend("cuda-extension", torch.device("cuda"), ext)
        dtypes, cases, iters = (torch.float32, torch.float16), BENCH_CASES, args.iters
    t0 = time.perf_counter()
    backend.poison(True)  # an element a kernel never writes stays NaN and fails its row
    checks = [] if args.skip_check else check_table(backend, dtypes, gen)
    special = [] if args.skip_check else check_special(backend, gen)
    backend.poison(False)
    print(f"checked {len(checks)} + {len(special)} cases in {time.perf_counter() - t0:.0f} s")
    # 1 GiB: far past the L2 (60 MB on an H200), so this is the memory ceiling, not the cache's.
    copy_gbps = copy_bandwidth(backend.device, iters, 1 << 30 if not args.dry_run else 8 << 20)
    rows = bench(backend, cases, dtypes, iters, copy_gbps,
                 compile_=not args.no_compile and not args.dry_run, gen=gen)
    print_tables(checks, special, rows, copy_gbps)
    report = {"environment": environment(backend.device, args.dry_run),
              "backend": backend.name, "copy_gbps": round(copy_gbps, 1),
              "correctness": [asdict(c) for c in checks], "special_values": special,
              "timings": [asdict(r) for r in rows], "targets": targets(rows, args.dry_run)}
    args.out.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^A-Za-z0-9]+", "-", report["environment"]["device"]).strip("-").lower()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"gpu_check-{'dry-run-' if args.dry_run else ''}{device}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    failed = [c for c in checks if not c.ok] + [s for s in special if not s["matches_cpu_build"]]
    print(f"gpu-check: {'FAIL' if failed else 'PASS'} ({len(failed)} failing checks)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
