"""Results of bench/gpu_models.py: the records its JSON holds, the table it prints, the target."""

from __future__ import annotations

from dataclasses import dataclass, field

CONFIGS = ("eager", "eager+graph", "compile", "compile-ro", "ours", "ours+graph")
TARGET = 1.5  # ours+graph >= 1.5x compile-ro at batch 1


@dataclass
class ConfigResult:
    config: str
    latency_us: float | None = None  # median over rounds of each round's median
    rounds_us: list = field(default_factory=list)
    gpu_us: float | None = None  # GPU time per forward, from a graph of 10 forwards
    max_abs_err: float | None = None  # against eager at the same dtype
    tolerance: float | None = None
    max_abs_err_vs_fp32: float | None = None  # float16 rows: against eager in float32
    ok: bool | None = None
    setup_s: float | None = None  # compile / capture / warm-up, counted
    kernels: dict | None = None  # ours: which of our kernels one forward ran
    skipped: str | None = None
    note: str | None = None


@dataclass
class ComboResult:
    model: str
    batch: int
    dtype: str
    input_shape: tuple = ()
    output_shape: tuple = ()
    needs_default_device: str | None = None  # why the forward runs under torch.device(...)
    fp16_vs_fp32_eager: float | None = None  # the precision's own effect, for scale
    configs: list = field(default_factory=list)
    skipped: str | None = None


def targets(combos: list[ComboResult], dry_run: bool) -> dict:
    """The issue's target: at batch 1, ours+graph >= 1.5x torch.compile(reduce-overhead)."""
    if dry_run:
        return {"note": "dry run on the CPU: these timings say nothing about GPU targets"}
    ratios = {}
    for c in combos:
        lat = {r.config: r.latency_us for r in c.configs}
        if c.batch == 1 and lat.get("ours+graph") and lat.get("compile-ro"):
            ratios[f"{c.model} {c.dtype}"] = round(lat["compile-ro"] / lat["ours+graph"], 2)
    return {"ours_graph_1.5x_compile_reduce_overhead_at_batch_1": {
        "met": bool(ratios) and all(v >= TARGET for v in ratios.values()),
        "ratios": ratios,
        "note": "latency of compile-ro / latency of ours+graph, batch 1"}}


def _cell(value, width=9, fmt="{:.1f}") -> str:
    return f"{'-':>{width}}" if value is None else f"{fmt.format(value):>{width}}"


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def print_table(combos: list[ComboResult], dry_run: bool) -> None:
    short = {"eager+graph": "e+graph", "compile-ro": "comp-ro", "ours+graph": "ours+g"}
    print(f"{'model':<16}{'batch':>6} {'dtype':<8}"
          + "".join(f"{short.get(c, c):>9}" for c in CONFIGS)
          + f"{'ro/ours+g':>10}{'e+g/ours+g':>11}{'eager/ours':>11}{'err/tol':>9}")
    notes = []
    for c in combos:
        if c.skipped:
            notes.append(f"{c.model} batch {c.batch} {c.dtype}: skipped: {c.skipped}")
            continue
        r = {x.config: x for x in c.configs}
        lat = {k: v.latency_us for k, v in r.items()}
        ratios = (_ratio(lat["compile-ro"], lat["ours+graph"]),
                  _ratio(lat["eager+graph"], lat["ours+graph"]), _ratio(lat["eager"], lat["ours"]))
        worst = max((x.max_abs_err / x.tolerance for x in c.configs if x.tolerance), default=None)
        print(f"{c.model:<16}{c.batch:>6} {c.dtype:<8}"
              + "".join(_cell(lat[k]) for k in CONFIGS)
              + "".join(_cell(v, w, "{:.2f}") for v, w in zip(ratios, (10, 11, 11)))
              + _cell(worst, 9, "{:.2f}"))
        notes += [f"{c.model} batch {c.batch} {c.dtype} {x.config}: {x.skipped or x.note}"
                  for x in c.configs if (x.skipped and not x.skipped.startswith("dry run"))
                  or x.note]
        if dry_run:
            notes += [f"{x.config}: skipped: {x.skipped}" for x in c.configs
                      if x.skipped and x.skipped.startswith("dry run")]
        if c.needs_default_device:
            notes.append(f"{c.model}: runs under torch.device(...) ({c.needs_default_device})")
    clock = "wall clock on the CPU" if dry_run else "CUDA events, idle GPU"
    print(f"latency in microseconds per forward ({clock}, median of interleaved rounds); "
          "err/tol = worst max-abs error against eager over the tolerance (<= 1 passes)")
    graphed = [c for c in combos if not c.skipped and any(x.gpu_us for x in c.configs)]
    if graphed:
        print(f"{'GPU time per forward, graph of 10':<31}{'eager':>9}{'compile':>9}{'ours':>9}")
        for c in graphed:
            r = {x.config: x.gpu_us for x in c.configs}
            print(f"{c.model:<16}{c.batch:>6} {c.dtype:<8}"
                  + "".join(_cell(r[k], fmt="{:.2f}") for k in ("eager", "compile", "ours")))
    kernels = {c.model: x.kernels for c in combos if not c.skipped for x in c.configs
               if x.config == "ours" and x.kernels}
    for model, k in kernels.items():
        print(f"ours in {model}: {k} per forward")
    for line in dict.fromkeys(notes):
        print(f"  {line}")
