"""Latency and throughput of Session objects: percentiles, interleaved runs, a JSON record.

Backends are measured in interleaved rounds (A, B, C, A, B, C, ...) so a neighbour process that
loads the CPU for a few seconds slows every backend alike instead of one. Each call is timed
with ``perf_counter``; latency percentiles are over calls, throughput is samples per second of
the mean call.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from stn_deploy.runtime.session import Session

__all__ = [
    "LatencyStats",
    "BenchRow",
    "measure_interleaved",
    "environment",
    "format_table",
    "speedup",
    "save_record",
    "plot_rows",
]


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles (milliseconds) and throughput (samples/s) of one backend."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    calls: int

    @classmethod
    def from_times(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        return cls(float(p50), float(p90), float(p99), mean, batch * 1e3 / mean, len(ms))


@dataclass(frozen=True)
class BenchRow:
    """One (backend, batch size) measurement, or the reason it could not be taken."""

    backend: str
    batch: int
    stats: LatencyStats | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        record = {"backend": self.backend, "batch": self.batch, "error": self.error, **self.extra}
        if self.stats is not None:
            record.update(asdict(self.stats))
        return record


def _feeds(session: Session, x: np.ndarray) -> dict[str, np.ndarray]:
    spec = session.inputs[0]
    return {spec.name: x.astype(np.dtype(spec.dtype), copy=False)}


def measure_interleaved(
    sessions: Mapping[str, Session],
    x: np.ndarray,
    *,
    min_time: float = 1.0,
    rounds: int = 3,
    warmup: int = 3,
    min_calls: int = 5,
) -> dict[str, LatencyStats | str]:
    """Time every session on batch ``x``; a backend that fails gets its error message instead.

    Each backend runs for about ``min_time`` seconds in total, split over ``rounds`` rounds.
    """
    batch = int(x.shape[0])
    feeds = {name: _feeds(s, x) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    failed: dict[str, str] = {}
    for name, session in sessions.items():
        try:
            for _ in range(warmup):
                session.infer(feeds[name])
        except Exception as exc:  # noqa: BLE001 - a failing backend is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    budget = min_time / max(rounds, 1)
    for _ in range(max(rounds, 1)):
        for name, session in sessions.items():
            if name in failed:
                continue
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                session.infer(feeds[name])
                t1 = time.perf_counter()
                times[name].append(t1 - t0)
                if t1 - start >= budget and len(times[name]) >= min_calls:
                    break
    return {
        name: failed.get(name) or LatencyStats.from_times(times[name], batch) for name in sessions
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(dists: Sequence[str]) -> dict[str, str]:
    """{distribution: version} of those installed (missing ones left out)."""
    return {d: v for d in dists if (v := _version(d)) is not None}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Machine, CPU, load, library versions and the UTC date: what a bench record needs."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": list(load) if load else None,
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("torch", "onnxruntime", "onnx", "onnxscript", "numpy", "stn-deploy")
        },
    }


def speedup(rows: Sequence[BenchRow], backend: str, baseline: str, batch: int) -> float | None:
    """p50 latency of ``baseline`` over ``backend`` at ``batch`` (None if either is missing)."""
    by = {(r.backend, r.batch): r.stats for r in rows if r.stats is not None}
    a, b = by.get((backend, batch)), by.get((baseline, batch))
    return None if a is None or b is None else b.p50_ms / a.p50_ms


def format_table(rows: Sequence[BenchRow], baseline: str = "torch") -> str:
    """A plain-text table: one line per (backend, batch) with percentiles and x-vs-baseline."""
    head = f"{'backend':<12}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
    head += f"{'samples/s':>12}{'vs ' + baseline:>12}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r.batch, r.backend)):
        if r.stats is None:
            lines.append(f"{r.backend:<12}{r.batch:>6}  unavailable: {r.error}")
            continue
        s = r.stats
        ratio = speedup(rows, r.backend, baseline, r.batch)
        rel = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(
            f"{r.backend:<12}{r.batch:>6}{s.p50_ms:>10.3f}{s.p90_ms:>10.3f}{s.p99_ms:>10.3f}"
            f"{s.throughput:>12.0f}{rel:>12}"
        )
    return "\n".join(lines)


def save_record(record: dict, path: str | os.PathLike) -> Path:
    """Write ``record`` as indented JSON (parents created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return out


def plot_rows(rows: Sequence[BenchRow], path: str | os.PathLike, title: str = "") -> Path:
    """PNG: p50 latency and throughput against batch size, one line per backend (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in dict.fromkeys(r.backend for r in rows):
        pts = sorted((r.batch, r.stats) for r in rows if r.backend == backend and r.stats)
        if not pts:
            continue
        batches = [b for b, _ in pts]
        ax_lat.plot(batches, [s.p50_ms for _, s in pts], marker="o", label=backend)
        ax_thr.plot(batches, [s.throughput for _, s in pts], marker="o", label=backend)
    for ax, label in ((ax_lat, "p50 latency (ms)"), (ax_thr, "throughput (samples/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
