"""bench/gpu_models.py without a GPU: the whole-model table on the CPU, and the kernel swap.

The GPU run gets one short call (bench/gpu_machine.sh), so everything that does not need CUDA
is proven here: --dry-run runs every model, batch, dtype and configuration the CPU can (the CPU
build of our kernels standing in for the extension), and the swap that puts our kernels into
models we did not write is checked for values and for which kernel ran.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCRIPT = BENCH / "gpu_models.py"
GRAPH_CONFIGS = {"eager+graph", "compile-ro", "ours+graph"}
KERNELS = {"tutorial-R": {"fused_affine": 1}, "st-cnn-affine-R": {"fused_affine": 1},
           "st-cnn-tps-R": {"generic": 1}, "ocr-tps": {"generic": 1}}


@pytest.fixture
def bench(monkeypatch):
    """The bench scripts' modules (they import each other as top-level modules)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_backend
    import gpu_models
    import gpu_swap

    cpu = gpu_backend.Backend("cpu-build", torch.device("cpu"))
    return gpu_models, gpu_swap, cpu


def test_dry_run_runs_every_model_batch_dtype_and_config_the_cpu_can(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-models: PASS (0 failures)" in proc.stdout
    assert "ro/ours+g" in proc.stdout  # the target's ratio has its column
    (path,) = tmp_path.glob("gpu_models-dry-run-*.json")
    report = json.loads(path.read_text())
    assert report["complete"] and report["backend"] == "cpu-build" and not report["failures"]
    assert report["environment"]["dry_run"] is True
    assert "dry run" in report["targets"]["note"]
    results = report["results"]
    assert [(r["model"], r["batch"], r["dtype"]) for r in results] == [
        (m, b, d) for b in (1, 8) for d in ("float32", "float16") for m in KERNELS]
    for r in results:
        if r["model"] == "ocr-tps" and r["dtype"] == "float16":
            # its forward makes a float32 zero block: half precision cannot run, and says why
            assert "eager fails in float16" in r["skipped"] and ".float()" in r["skipped"]
            continue
        assert r["skipped"] is None, r
        configs = {c["config"]: c for c in r["configs"]}
        for name in ("eager", "compile", "ours"):
            c = configs[name]
            assert c["ok"] and c["max_abs_err"] <= c["tolerance"], (r["model"], c)
            assert c["latency_us"] > 0 and len(c["rounds_us"]) == 2
        for name in GRAPH_CONFIGS:
            assert configs[name]["skipped"].startswith("dry run"), configs[name]
            assert configs[name]["latency_us"] is None
        assert configs["ours"]["kernels"] == KERNELS[r["model"]]
        if r["dtype"] == "float16":
            assert r["fp16_vs_fp32_eager"] > 0
            assert configs["ours"]["max_abs_err_vs_fp32"] > 0
    assert report["settings"]["compile_backend"].startswith("eager (dry run")


def test_our_sampling_runs_user_modules_on_our_kernels(bench):
    """A TorchFunctionMode takes F.grid_sample to the generic kernel and an unchanged
    F.affine_grid grid to the fused one; what the kernels cannot take stays PyTorch's."""
    gm, swap, cpu = bench
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 9, 11, generator=gen)
    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.15, 1.1, -0.05]]).repeat(3, 1, 1)
    theta += 0.05 * torch.randn(3, 2, 3, generator=gen)
    grid = torch.rand(3, 4, 6, 2, generator=gen) * 2.4 - 1.2

    def affine(x, ac_grid=True, ac_sample=True, nudge=False):
        grid = F.affine_grid(theta, [3, 2, 7, 5], align_corners=ac_grid)
        if nudge:
            grid += 0.01  # changed in place after affine_grid: no longer theta's grid
        return F.grid_sample(x, grid, padding_mode="border", align_corners=ac_sample)

    def inference(fn):
        with torch.inference_mode():  # its tensors keep no in-place counter: not fused
            return fn()

    cases = [
        (lambda: affine(x), {"fused_affine": 1}),
        (lambda: inference(lambda: affine(x)), {"generic": 1}),
        (lambda: affine(x, ac_grid=False), {"generic": 1}),  # align_corners differ
        (lambda: affine(x, nudge=True), {"generic": 1}),
        (lambda: F.grid_sample(x, grid, mode="bicubic", align_corners=False), {"generic": 1}),
        (lambda: F.grid_sample(x[:, None], torch.zeros(3, 1, 2, 2, 3), align_corners=False),
         {"torch": 1}),  # 5-D
        (lambda: F.grid_sample(x.double(), torch.zeros(3, 2, 2, 2, dtype=torch.float64),
                               align_corners=False),
         {"torch": 1}),
    ]
    kernels = swap.OurKernels(cpu)
    for fn, want in cases:
        expected = fn()
        out = []
        with swap.OurSampling(kernels):
            assert kernels.per_forward(lambda fn=fn, out=out: out.append(fn())) == want
        torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=0)


def test_our_sampling_in_realistic_modules(bench):
    """Modules written without us: each grid_sample runs on our kernels, with eager's values."""
    gm, swap, cpu = bench
    realistic = gm._import_realistic()
    kernels = swap.OurKernels(cpu)
    # kornia builds its affine grid itself (no F.affine_grid in eager), two-stage uses einsum/bmm
    for name, want in (("kornia-affine", {"generic": 1}), ("two-stage", {"generic": 2}),
                       ("ocr-tps", {"generic": 1})):
        case = next(c for c in realistic.CASES if c.name == name)
        model = realistic.make(case)
        x = torch.rand(2, *case.input_shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = model(x)
            out = []
            with swap.OurSampling(kernels):
                assert kernels.per_forward(lambda m=model, o=out, x=x: o.append(m(x))) == want, name
        torch.testing.assert_close(out[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("transform", ["affine", "attention", "projective", "tps"])
def test_swap_warps_gives_the_warps_values_on_our_kernels(bench, transform):
    gm, swap, cpu = bench
    from stn_deploy.models import build_model
    from stn_deploy.models.sampling import Warp

    model = build_model("st2-cnn", transform=transform).eval()  # two warps in a ModuleList
    with torch.no_grad():  # move away from the identity, so sampling is not trivial
        for loc in model.localisers:
            loc.regressor.bias.add_(0.08 * torch.randn(loc.regressor.bias.shape))
            loc.regressor.weight.normal_(0, 0.02)
    if transform == "projective":
        with torch.no_grad():  # keep the homography well conditioned
            for loc in model.localisers:
                loc.regressor.bias[6:] = torch.tensor([0.05, -0.05])
                loc.regressor.weight[6:] = 0
    kernels = swap.OurKernels(cpu)
    swapped, count = swap.swap_warps(model, kernels)
    assert count == 2
    assert all(isinstance(w, Warp) for w in model.warps)  # the original is untouched
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        kernels.calls.clear()
        got_logits, got_aux = swapped(x, return_aux=True)
    kind = {"affine": "fused_affine", "attention": "fused_affine",
            "projective": "fused_projective", "tps": "generic"}[transform]
    assert dict(kernels.calls) == {kind: 2}
    torch.testing.assert_close(got_aux["warped"], aux["warped"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_aux["theta"], aux["theta"])
    torch.testing.assert_close(got_logits, logits, atol=1e-4, rtol=1e-4)


def test_float32_gate_catches_a_kernel_off_by_half_a_pixel(bench):
    """The gate has teeth: sampling with the other align_corners fails it in float32 for each
    zoo model (in float16 the models' own rounding hides it for the affine ones, measured)."""
    gm, swap, cpu = bench

    class Flipped(type(cpu)):
        def affine(self, x, theta, out_hw, mode, padding, ac):
            return super().affine(x, theta, out_hw, mode, padding, not ac)

        def grid_sample(self, x, grid, mode, padding, ac):
            return super().grid_sample(x, grid, mode, padding, not ac)

    for name in gm.ZOO:
        base, shape = gm.load(name)
        x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            ref = base(x)
            right, _ = swap.swap_warps(base, swap.OurKernels(cpu))
            wrong, _ = swap.swap_warps(base, swap.OurKernels(Flipped("flipped", cpu.device)))
            err, tol, ok = gm._compare(right(x), ref, "float32")
            assert ok, (name, err, tol)
            err, tol, ok = gm._compare(wrong(x), ref, "float32")
            assert not ok and err > 10 * tol, (name, err, tol)


class _MakesCpuTensors(torch.nn.Module):
    """A user module written for the CPU: a tensor without a device inside forward."""

    def forward(self, x):
        return x.flatten(1)[:, :3] + torch.ones(x.shape[0], 3)


def test_a_module_that_makes_cpu_tensors_runs_under_the_default_device(bench):
    """A module that makes tensors without a device needs torch.device(...) as a context on
    another device; models that place their tensors (the zoo, ocr-tps) need nothing."""
    gm, _, _ = bench
    meta = torch.device("meta")  # any device but the CPU shows it; no GPU needed
    with torch.no_grad():
        x = torch.empty(2, 1, 4, 4, device=meta)
        scope, why = gm.eager_scope(_MakesCpuTensors(), x, meta)
        assert "device" in why
        with scope():
            assert _MakesCpuTensors()(x).shape == (2, 3)
        for name in ("tutorial-R", "ocr-tps"):
            model, shape = gm.load(name)
            assert gm.eager_scope(copy.deepcopy(model).to(meta),
                                  torch.empty(1, *shape, device=meta), meta)[1] is None, name


def test_targets_judge_batch_1_ours_graph_against_compile_reduce_overhead(bench):
    gm, _, _ = bench
    from gpu_models_report import ComboResult, ConfigResult

    def combo(model, batch, ro, ours_graph):
        return ComboResult(model, batch, "float32", configs=[
            ConfigResult("compile-ro", latency_us=ro), ConfigResult("ours+graph",
                                                                    latency_us=ours_graph)])

    rows = [combo("tutorial-R", 1, 90.0, 40.0), combo("ocr-tps", 1, 60.0, 38.0),
            combo("ocr-tps", 64, 10.0, 100.0)]  # batch 64 is not the target's
    got = gm.targets(rows, dry_run=False)["ours_graph_1.5x_compile_reduce_overhead_at_batch_1"]
    assert got["met"] and got["ratios"] == {"tutorial-R float32": 2.25, "ocr-tps float32": 1.58}
    rows[1] = combo("ocr-tps", 1, 50.0, 38.0)
    got = gm.targets(rows, dry_run=False)["ours_graph_1.5x_compile_reduce_overhead_at_batch_1"]
    assert not got["met"] and got["ratios"]["ocr-tps float32"] == 1.32
    missing = [combo("tutorial-R", 1, None, 40.0)]  # compile-ro skipped: nothing to judge
    assert not gm.targets(missing, dry_run=False)[
        "ours_graph_1.5x_compile_reduce_overhead_at_batch_1"]["met"]


def test_budgets_skip_work_and_say_so(bench, tmp_path, monkeypatch, capsys):
    gm, _, _ = bench
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process be
    args = ["--dry-run", "--models", "tutorial-R", "--dtypes", "float32", "--out"]
    assert gm.main([*args, str(tmp_path / "a"), "--batches", "1", "--compile-budget-s", "0"]) == 0
    assert gm.main([*args, str(tmp_path / "b"), "--batches", "1,64", "--budget-s", "0"]) == 0
    (first,) = (tmp_path / "a").glob("gpu_models-dry-run-*.json")
    (second,) = (tmp_path / "b").glob("gpu_models-dry-run-*.json")
    (row,) = json.loads(first.read_text())["results"]
    compile_ = next(c for c in row["configs"] if c["config"] == "compile")
    assert compile_["skipped"].startswith("compile budget spent")
    assert next(c for c in row["configs"] if c["config"] == "ours")["latency_us"] > 0
    rows = json.loads(second.read_text())["results"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["skipped"].startswith("time budget spent") for r in rows)
    assert "skipped: time budget spent" in capsys.readouterr().out

