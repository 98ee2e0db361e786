"""A lean KServe v2 load client: prebuilt requests over keep-alive HTTP/1.1 connections.

``bench/load_bench.py`` and ``bench/peers/`` drive it against ``stn-deploy serve``; it also works
against Triton, MLServer or any server speaking the Open Inference Protocol, with binary tensors
or JSON (gRPC: :mod:`stn_deploy.load_client_grpc`). It is deliberately cheap, because on a small
box it competes with the server for the CPU: every request body is built before the clock
starts, only the status line and two headers are parsed while it runs, and every answer is
checked against its own request after the timed window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LevelResult",
    "inputs_and_expected",
    "build_requests",
    "check_answer",
    "close_enough",
    "run_level",
    "run",
    "process_cpu_s",
    "process_cpu_split",
    "own_cpu_s",
    "server_batch_stats",
]


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    mismatches: int
    seconds: float
    throughput: float  # samples per second (requests x samples per request)
    p50_ms: float
    p99_ms: float
    client_cpu_ms_per_request: float = 0.0
    server_cpu_ms_per_request: float | None = None  # only when the server is our subprocess
    # that figure by thread kind (process_cpu_split): {"main": event loops, "threads": the rest}
    server_cpu_ms_per_request_by_thread: dict[str, float] | None = None


def inputs_and_expected(path: Path, n: int, seed: int = 0, samples: int = 1):
    """n random inputs [samples, C, H, W] for the model at ``path``, and the logits of each
    from a local ONNX Runtime session (what every answer is checked against)."""
    from stn_deploy.runtime.ort import OrtSession

    sess = OrtSession(path).open()
    shape = [d if isinstance(d, int) else 1 for d in sess.inputs[0].shape[1:]]
    rng = np.random.default_rng(seed)
    xs = rng.random((n, samples, *shape), dtype=np.float32)
    expected = [sess.infer({"input": x})["logits"] for x in xs]
    sess.close()
    return xs, expected


def build_requests(
    path: Path,
    name: str,
    host: str,
    n: int,
    seed: int = 0,
    samples: int = 1,
    protocol: str = "binary",
    url_path: str | None = None,
):
    """n prebuilt HTTP requests (``samples`` each, binary tensors or JSON) and the logits each
    must get. ``url_path`` defaults to the KServe v2 /v2/models/NAME/infer."""
    from stn_deploy.runtime.serving.protocol_client import (
        encode_infer_request,
        encode_json_request,
    )

    encoders = {"binary": encode_infer_request, "json": encode_json_request}
    if protocol not in encoders:
        raise ValueError(f"protocol {protocol!r} is not one of {sorted(encoders)}")
    xs, expected = inputs_and_expected(path, n, seed, samples)
    target = url_path or f"/v2/models/{name}/infer"
    requests = []
    for x in xs:
        body, headers = encoders[protocol]({"input": x})
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
    return requests, expected


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, int | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    header_len = headers.get("inference-header-content-length")
    return status, body, int(header_len) if header_len else None


def close_enough(got: np.ndarray, expected: np.ndarray) -> bool:
    # |got - expected| <= 1e-4 * (1 + |expected|): np.allclose's rule at a fraction of its cost
    return (
        bool((np.abs(got - expected) <= 1e-4 * (1 + np.abs(expected))).all())
        and (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    )


def check_answer(body: bytes, header_len: int | None, expected: np.ndarray) -> bool:
    """Does a KServe v2 response (binary logits, or JSON "data") hold the expected logits?"""
    try:
        if header_len is not None:
            got = np.frombuffer(body, np.float32, offset=header_len)
        else:
            doc = json.loads(body)
            (out,) = [o for o in doc["outputs"] if o["name"] == "logits"]
            got = np.asarray(out["data"], np.float32)
            if list(out["shape"]) != list(expected.shape):
                return False
        return got.size == expected.size and close_enough(got.reshape(expected.shape), expected)
    except (ValueError, KeyError, TypeError):
        return False


def _ticks(stat_path: Path) -> int | None:
    """user + system clock ticks from a /proc .../stat file, or None when it is gone."""
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def process_cpu_split(pid: int | None) -> dict[str, float] | None:
    """CPU seconds of a process and its live children (Linux /proc), by thread kind, or None.

    ``main``: each process's main thread (in ``stn-deploy serve`` workers, the event loop:
    HTTP, decode, encode); ``threads``: all other threads (the batching thread, which runs the
    model, and any ONNX Runtime pool threads). Children count because ``serve --workers N``
    serves from child processes.
    """
    if pid is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    main = _ticks(Path(f"/proc/{pid}/task/{pid}/stat")) or 0  # read first: whole >= main
    whole = _ticks(Path(f"/proc/{pid}/stat"))  # includes the threads that have exited
    if whole is None:
        return None
    split = {"main": main / tick, "threads": (whole - main) / tick}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        for kind, seconds in (process_cpu_split(int(child)) or {}).items():
            split[kind] += seconds
    return split


def process_cpu_s(pid: int | None) -> float | None:
    """user+system CPU seconds of a process and its live children (Linux /proc), else None."""
    split = process_cpu_split(pid)
    return None if split is None else split["main"] + split["threads"]


def server_batch_stats(host: str, port: int) -> dict:
    """Backend calls and mean batch size so far, from an stn-deploy server's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("stn_batch_size_sum", "stn_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = float(line.rsplit(" ", 1)[1])
    count = values.get("stn_batch_size_count", 0)
    return {
        "backend_calls": int(count),
        "mean_batch": round(values.get("stn_batch_size_sum", 0) / count, 2) if count else 0,
    }


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def run_level(
    host: str,
    port: int,
    requests,
    expected,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    pid: int | None = None,
    samples: int = 1,
    check: bool = True,
) -> LevelResult:
    """``concurrency`` keep-alive connections, each sending its next request when answered."""
    latencies: list[float] = []
    answers: list[tuple[int, bytes, int | None]] = []  # (request index, body, header length)
    counters = {"next": 0, "errors": 0, "mismatches": 0}
    stop_at = time.perf_counter() + max_seconds

    async def stream() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while counters["next"] < max_requests and time.perf_counter() < stop_at:
                i = counters["next"]
                counters["next"] += 1
                k = i % len(requests)
                t0 = time.perf_counter()
                writer.write(requests[k])
                status, body, header_len = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    counters["errors"] += 1
                elif check:
                    answers.append((k, body, header_len))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    start, cpu0, server0 = time.perf_counter(), own_cpu_s(), process_cpu_split(pid)
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    cpu, server1 = own_cpu_s() - cpu0, process_cpu_split(pid)
    # Every answer is checked, after the timed window: on a 2-core box the check's CPU would
    # otherwise be taken from the server under test (about 30 µs per request).
    counters["mismatches"] = sum(not check_answer(b, h, expected[k]) for k, b, h in answers)
    n = max(1, len(latencies))
    by_thread = None
    if server0 is not None and server1 is not None:
        by_thread = {k: round((server1[k] - server0[k]) * 1000 / n, 4) for k in server1}
    server_ms = None if by_thread is None else round(sum(by_thread.values()), 4)
    lat = np.asarray(latencies) * 1000
    return LevelResult(
        concurrency=concurrency, requests=len(latencies), errors=counters["errors"],
        mismatches=counters["mismatches"], seconds=round(seconds, 3),
        throughput=round(len(latencies) * samples / seconds, 1),
        p50_ms=round(float(np.percentile(lat, 50)), 3),
        p99_ms=round(float(np.percentile(lat, 99)), 3),
        client_cpu_ms_per_request=round(cpu * 1000 / n, 4), server_cpu_ms_per_request=server_ms,
        server_cpu_ms_per_request_by_thread=by_thread,
    )  # fmt: skip


def run(coro):
    """asyncio.run on uvloop when installed: the client's own overhead competes for the CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
