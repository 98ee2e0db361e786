"""The peer comparison: stn-deploy serve against MLServer and LitServe, same ONNX, same client.

    .venv/bin/python bench/peers/run.py [--rounds 5] [--baseline REF]
        [--out bench/results/peers_tutorial-R.json] [--plot bench/results/peers_tutorial-R.png]

Installs MLServer and LitServe once, each in its own venv under ``--cache`` (default
``~/.cache/stn-deploy/peers``, never the repository), serves the same ONNX file (tutorial-R,
``logits`` only) from every server with batches of at most 64 samples and a 2 ms delay, and
drives each with one client (:mod:`stn_deploy.load_client`, :mod:`stn_deploy.load_client_grpc`)
over every protocol it speaks: REST JSON, our binary tensor extension, gRPC. One sample per
request. Rounds are interleaved (every server and protocol once per round, in a rotating
order) so that other jobs on a shared machine hit all of them alike; the report gives medians.
Every answer is checked against a local ONNX Runtime session after each timed window. The JSON
holds the machine, versions, date, load average before and after (and per round), each server's
settings and idle CPU, every cell, the medians and the issue's targets, met or missed.
Not part of ``make test`` (it installs the peers and takes minutes); its pure parts are tested.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402 - siblings of this script
import servers  # noqa: E402

_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_CACHE = _CACHE_HOME / "stn-deploy" / "peers"
SERVERS = ("ours", "mlserver", "litserve")


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _idle_cpu(server: servers.Server, seconds: float = 2.0) -> float:
    """Cores the server keeps busy while nobody calls it (it shares the machine meanwhile)."""
    from stn_deploy.load_client import process_cpu_s

    before = process_cpu_s(server.proc.pid) or 0.0
    time.sleep(seconds)
    return round(((process_cpu_s(server.proc.pid) or 0.0) - before) / seconds, 3)


def build_all(onnx: Path, name: str, n: int = 512) -> dict:
    """Prebuilt requests per protocol, the same inputs (same seed) for each; their answers."""
    from stn_deploy.load_client import build_requests
    from stn_deploy.load_client_grpc import build_grpc_requests

    return {
        "json": build_requests(onnx, name, "127.0.0.1", n, protocol="json"),
        "binary": build_requests(onnx, name, "127.0.0.1", n, protocol="binary"),
        "grpc": build_grpc_requests(onnx, name, n),
    }


def run_cell(server: servers.Server, protocol: str, concurrency: int, requests: dict,
             max_requests: int, seconds: float):  # fmt: skip
    from stn_deploy.load_client import run, run_level
    from stn_deploy.load_client_grpc import run_grpc_level

    bodies, expected = requests[protocol]
    if protocol == "grpc":
        level = run_grpc_level("127.0.0.1", server.grpc_port, bodies, expected, concurrency,
                               max_requests, seconds, server.proc.pid)  # fmt: skip
    else:
        level = run_level("127.0.0.1", server.http_port, bodies, expected, concurrency,
                          max_requests, seconds, server.proc.pid)  # fmt: skip
    return run(level)


def _machine() -> dict:
    from stn_deploy.runtime.bench import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def _our_versions() -> dict:
    from stn_deploy.runtime.bench import installed_versions

    return installed_versions(("stn-deploy", "onnxruntime", "numpy", "uvicorn", "starlette",
                               "orjson", "grpcio", "protobuf", "tritonclient"))  # fmt: skip


def measure(args, onnx: Path, workdir: Path) -> dict:
    import onnxruntime

    kinds = [k for k in args.servers.split(",") if k]
    if args.baseline:
        kinds.insert(1, "baseline")
    levels = [int(v) for v in args.levels.split(",")]
    requests = build_all(onnx, args.name)
    doc = {
        "what": "stn-deploy serve vs MLServer and LitServe: same ONNX file, same client, "
                "1 sample per request, batches <= 64 samples with a 2 ms delay; interleaved "
                "rounds, medians; client and servers share the machine",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "versions": {"ours": _our_versions()},
        "load_average_before": _loadavg(),
        "model": {"name": args.name, "onnx": str(onnx), "bytes": onnx.stat().st_size},
        "client": "one asyncio (uvloop) process: keep-alive HTTP/1.1 connections, one per "
                  "concurrent stream, prebuilt bodies (JSON: flat float lists; binary: Triton's "
                  "binary tensor extension); gRPC: grpc.aio, prebuilt ModelInferRequest bytes "
                  "(raw_input_contents), min(8, concurrency) connections; every answer checked",
        "levels": levels, "rounds": args.rounds, "max_requests_per_cell": args.max_requests,
        "max_seconds_per_cell": args.seconds, "servers": {}, "warmup": [], "cells": [],
        "load_average_per_round": [],
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        started = []
        for kind in kinds:
            server = stack.enter_context(servers.started(
                kind, onnx, args.name, workdir, args.cache, onnxruntime.__version__,
                baseline=args.baseline))  # fmt: skip
            started.append(server)
        for server in started:
            doc["servers"][server.name] = {
                "kind": server.kind, "protocols": list(server.protocols),
                "settings": server.settings, "versions": server.versions,
                "idle_cpu_cores": _idle_cpu(server),
            }  # fmt: skip
            for protocol in server.protocols:
                warm = run_cell(server, protocol, 8, requests, 300, 3.0)
                doc["warmup"].append({"server": server.name, "protocol": protocol,
                                      **asdict(warm)})  # fmt: skip
        for i in range(args.rounds):
            order = started[i % len(started):] + started[: i % len(started)]
            for server in order:
                for protocol in server.protocols:
                    for c in levels:
                        cell = run_cell(server, protocol, c, requests, args.max_requests,
                                        args.seconds)  # fmt: skip
                        doc["cells"].append({"server": server.name, "protocol": protocol,
                                             "round": i, **asdict(cell)})  # fmt: skip
                        print(f"round {i + 1} {server.name:>10} {protocol:>6} c={c:<3} "
                              f"{cell.throughput:9.1f}/s p50 {cell.p50_ms:7.2f} ms "
                              f"errors {cell.errors} mismatches {cell.mismatches}", flush=True)
            doc["load_average_per_round"].append(_loadavg())
    doc["load_average_after"] = _loadavg()
    doc["summary"] = report.summarize(doc["cells"])
    doc["targets"] = report.targets(doc["cells"], doc["summary"], concurrency=max(levels))
    return doc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ONNX file (default: tutorial-R exported, logits only)")
    parser.add_argument("--name", default="tutorial-R", help="model name on every server")
    parser.add_argument("--servers", default=",".join(SERVERS), help="of " + ",".join(SERVERS))
    parser.add_argument("--baseline", help="also serve ours at this git ref (before/after)")
    parser.add_argument("--levels", default="1,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-requests", type=int, default=6000, help="per cell")
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell, at most")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="peers' venvs")
    parser.add_argument("--out", type=Path, help="the JSON report (e.g. bench/results/...)")
    parser.add_argument("--plot", type=Path, help="the plot (PNG)")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.model:
        onnx = Path(args.model).resolve()
    else:
        from stn_deploy.model_source import checkpoint_onnx

        onnx = checkpoint_onnx("tutorial-R", extra_outputs=())
    with tempfile.TemporaryDirectory(prefix="stn-peers-") as tmp:
        doc = measure(args, onnx, Path(tmp))
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot:
        report.plot(doc["summary"], args.plot, f"{args.name}, 1 sample per request, "
                    f"{doc['machine']['cores']} cores shared by client and servers; "
                    f"load average {doc['load_average_before'][0]} -> "
                    f"{doc['load_average_after'][0]}")  # fmt: skip
    print(json.dumps(doc["targets"], indent=2))
    return 0 if doc["targets"]["zero_errors_and_mismatches"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
