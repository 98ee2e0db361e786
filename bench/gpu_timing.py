"""Timers for bench/gpu_check.py and gpu_models.py: CUDA events, graph replays, copy ceiling.

Per-call events measure what a caller of the kernel sees, host launch cost included when the
GPU waits for it; a graph of many calls replayed measures the GPU's own time per call, the
number comparable across launch-bound cases. On the CPU (--dry-run) a wall clock stands in.
"""

from __future__ import annotations

import statistics
import time

import torch


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn, iters):
            start = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            stop = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            for a, b in zip(start, stop):
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            return statistics.median(a.elapsed_time(b) * 1e3 for a, b in zip(start, stop))
    else:
        def run(fn, iters):
            samples = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e6)
            return statistics.median(samples)
    return run


def measure(fn, device, iters: int, warmup: int = 5) -> float:
    """Median microseconds per call."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _timer(device)(fn, iters)


def copy_bandwidth(device, iters: int, nbytes: int) -> float:
    """GB/s of a device-to-device copy (bytes read + written), measured now."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    us = measure(lambda: b.copy_(a), device, iters)
    return 2 * nbytes / (us * 1e-6) / 1e9


def graph_us(fn, device, calls: int = 20, replays: int = 20) -> float | None:
    """Median GPU microseconds per call of ``fn``, from a CUDA graph of ``calls`` calls replayed.

    None on the CPU, or when ``fn`` cannot be captured (the caller reports per-call events only).
    """
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        return None
    return measure(graph.replay, device, replays, warmup=2) / calls


def latency_us(fn, device, iters: int, warmup: int = 2) -> float:
    """Median microseconds per call as a caller waits for it: each call starts on an idle GPU.

    The device is synchronised before each call, so the CUDA events around it take in the host's
    launch cost (a launch-bound model's real latency), not only the GPU's work.
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return _timer(device)(fn, iters)
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(samples)
