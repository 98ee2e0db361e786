"""The server's own cost per request, without HTTP: the ASGI app driven in-process.

    .venv/bin/python bench/profile_server.py [--requests 20000] [--concurrency 64] [--out X.json]

An instant fake model (zeros) behind the real app (decode -> batcher -> encode -> metrics),
called directly with binary-tensor requests from ``concurrency`` asyncio tasks on uvloop. What it
prints is the CPU the server spends per request on top of HTTP and the model: the figure that
showed GIL-releasing numpy calls on the event loop (~10 µs each) and drove their removal.
Run it on a quiet machine; it uses both cores (event loop + batching thread).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.http_server import create_app
from stn_deploy.runtime.serving.protocol_client import encode_infer_request
from stn_deploy.runtime.session import Session, TensorSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_bench import _machine, _versions  # noqa: E402 - a sibling script


class InstantSession(Session):
    """Answers zeros at once: only the server's own work is left to measure."""

    backend = "instant"

    def _open(self) -> None:
        self.inputs = (TensorSpec("input", (None, 1, 28, 28)),)
        self.outputs = (TensorSpec("logits", (None, 10)),)

    def _infer(self, feeds):
        return {"logits": np.zeros((len(feeds["input"]), 10), np.float32)}

    def _close(self) -> None:
        pass


async def _drive(app, requests: int, concurrency: int) -> dict:
    body, headers = encode_infer_request({"input": np.random.rand(1, 1, 28, 28).astype("f4")})
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v2/models/stn/infer", "headers": raw,
             "client": ("127.0.0.1", 1)}  # fmt: skip
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive():
        return message

    statuses: list[int] = []

    async def send(event):
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    left = requests

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await app(scope, receive, send)

    batcher = app.state.endpoints.batcher
    batcher.start()
    start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    batcher.close()
    if statuses.count(200) != requests:
        raise RuntimeError(f"{requests - statuses.count(200)} requests failed: {set(statuses)}")
    return {"requests": requests, "concurrency": concurrency,
            "requests_per_s": round(requests / seconds, 1),
            "cpu_us_per_request": round(cpu * 1e6 / requests, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args(argv)
    config = ServerConfig(port=0, max_batch=64, max_delay_ms=2.0)
    sys.setswitchinterval(config.switch_interval_ms / 1000.0)  # as run_server does
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    rounds = []
    for _ in range(args.rounds):
        app = create_app(ServedModel("stn", InstantSession().open()), config)
        rounds.append(run(_drive(app, args.requests, args.concurrency)))
        print(rounds[-1], flush=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "versions": _versions(), "rounds": rounds,
        "median_cpu_us_per_request": float(np.median([r["cpu_us_per_request"] for r in rounds])),
    }  # fmt: skip
    print(f"server path, instant model: {report['median_cpu_us_per_request']} µs CPU per request")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
