"""CLI glue for serving: hand MODEL's open Session to the runtime server.

``stn-deploy serve MODEL``, ``serve-bench`` and ``triton-repo MODEL --out DIR``; turning MODEL
(a checkpoint directory or shipped name, an ``.onnx`` file or a TensorRT engine) into a Session
is :mod:`stn_deploy.model_source`. Also :func:`demo_serve`, the demo's round trip through a real
server and client.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import time
from pathlib import Path

from stn_deploy.model_source import (
    ENGINE_SUFFIXES,
    FLAVOURS,
    ServeError,
    checkpoint_onnx,
    choose_flavour,
    default_ort_threads,
    is_checkpoint,
    model_name,
    open_served,
    pick_backend,
    resolve_model,
)

__all__ = ["register", "demo_serve"]

log = logging.getLogger("stn_deploy.serve")


# -- commands -----------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
    from stn_deploy.runtime.serving.logs import configure_json_logging
    from stn_deploy.runtime.serving.uvicorn_runner import run_server

    if args.workers < 1:
        raise ServeError(f"--workers must be >= 1, got {args.workers}")
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.log_format == "json":
        configure_json_logging(level)
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms,
            max_queue=args.max_queue,
            max_request_batch=args.max_request_batch,
            request_timeout_s=args.request_timeout_s,
            body_timeout_s=args.body_timeout_s,
            header_timeout_s=args.header_timeout_s,
        )
    except ValueError as exc:
        raise ServeError(_as_flags(str(exc))) from None
    threads = args.threads or (default_ort_threads(args.workers) if args.workers > 1 else None)
    flavour = _flavour(args, threads)
    # Opened here even with --workers: bad input fails once, before any worker starts, and a
    # checkpoint is exported to ONNX once (the workers find it in the cache).
    name, session, _ = resolve_model(args.model, args.backend, threads, flavour)
    if args.workers > 1:
        from stn_deploy.runtime.serving.workers import serve_workers

        session.close()
        opener = functools.partial(open_served, args.model, args.backend, threads, args.name,
                                   flavour)
        setup = functools.partial(configure_json_logging, level)
        serve_workers(opener, config, args.workers, setup if args.log_format == "json" else None)
        return 0
    try:
        run_server(ServedModel(args.name or name, session), config)
    finally:
        session.close()
    return 0


def _flavour(args: argparse.Namespace, threads: int | None) -> str:
    """The ONNX flavour to serve a checkpoint in: --flavour, or with "auto" (the default) the
    faster of the two on this machine at --max-batch, decided once (workers get the answer)."""
    if args.flavour not in FLAVOURS:
        raise ServeError(f"--flavour must be one of {FLAVOURS}, got {args.flavour!r}")
    if args.flavour != "auto":
        return args.flavour
    if not is_checkpoint(args.model) or pick_backend(args.model, args.backend) != "ort":
        return "standard"  # an .onnx file or engine is served as it is
    flavour, timings = choose_flavour(args.model, threads, args.max_batch)
    log.info("--flavour auto: serving the %s flavour (p50 ms by batch size: %s)", flavour,
             timings)
    return flavour


def _engine_onnx(engine: Path, max_batch: int) -> Path | None:
    """The ONNX an engine was built from (its sidecar says), checking the batch profile."""
    from stn_deploy.runtime.engine_meta import read_meta

    meta = read_meta(engine)
    if meta is None:
        return None
    if max_batch > meta.batch.max:
        raise ServeError(
            f"--max-batch {max_batch} exceeds the engine's profile maximum {meta.batch.max}; "
            f"use --max-batch {meta.batch.max} or rebuild with --max-batch {max_batch}"
        )
    return Path(meta.onnx_path) if Path(meta.onnx_path).is_file() else None


def _triton_repo(args: argparse.Namespace) -> int:
    from stn_deploy.runtime.serving.triton_repo import TritonRepoConfig, write_triton_repo

    path = Path(args.model)
    engine = Path(args.engine) if args.engine else None
    if path.suffix in ENGINE_SUFFIXES:
        engine, onnx_path = path, _engine_onnx(path, args.max_batch)
    elif path.suffix == ".onnx":
        onnx_path = path
    else:
        onnx_path = checkpoint_onnx(args.model)
    if args.backend == "tensorrt" and engine is None:
        raise ServeError(
            "--backend tensorrt needs an engine: stn-deploy build model.onnx --out model.plan, "
            "then pass it as MODEL or --engine"
        )
    try:
        config = TritonRepoConfig(
            name=args.name or model_name(args.model),
            backend=args.backend,
            max_batch=args.max_batch,
            max_queue_delay_us=args.max_delay_us,
            instances=args.instances,
        )
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    written = write_triton_repo(
        args.out, config, onnx_path=onnx_path, engine_path=engine, plugin_lib=args.plugin_lib
    )
    for f in written:
        print(f)
    return 0


def _load_bench_module():
    """bench/load_bench.py of the source checkout (the benchmark is not part of the wheel)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / "load_bench.py"
    if not path.is_file():
        raise ServeError(
            f"the load benchmark is not installed with the package ({path} is missing); run it "
            "from a checkout of the repository: python bench/load_bench.py --help"
        )
    spec = importlib.util.spec_from_file_location("stn_load_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("stn_load_bench", module)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def _serve_bench(args: argparse.Namespace) -> int:
    forwarded = list(args.bench_args)
    if forwarded[:1] == ["--"]:  # `serve-bench -- --out X`: the separator is ours, not theirs
        forwarded = forwarded[1:]
    return _load_bench_module().main(forwarded)


_FLAG_FIELDS = re.compile(
    r"\b(grpc_port|port|max_batch|max_delay_ms|max_queue|max_request_batch|request_timeout_s"
    r"|body_timeout_s|header_timeout_s)\b"
)


def _as_flags(message: str) -> str:
    """A ServerConfig error in the words of this command line: max_queue -> --max-queue."""
    return _FLAG_FIELDS.sub(lambda m: "--" + m[1].replace("_", "-"), message)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over KServe v2 HTTP (and gRPC) with dynamic batching",
        description="Serve MODEL (checkpoint dir, .onnx or engine) over the KServe v2 / Open "
        "Inference Protocol over HTTP, and over gRPC with --grpc-port; any tritonclient or "
        "KServe client talks to it.",
    )
    p.add_argument("model", help="checkpoint directory, .onnx file or TensorRT engine")
    p.add_argument(
        "--backend",
        choices=("auto", "ort", "trt", "torch"),
        default="auto",
        help="default: trt with tensorrt and a GPU, else ort",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--grpc-port",
        type=int,
        help="also serve KServe v2 gRPC (GRPCInferenceService, as Triton) on this port, e.g. "
        "8001 (0: any free port); needs the grpc extra: pip install 'stn-deploy[grpc]'",
    )
    p.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="auto",
        help="ONNX flavour a checkpoint is served in on ONNX Runtime; auto (default): time both "
        "at --max-batch on this machine and serve the faster",
    )
    p.add_argument("--name", help="model name (default: checkpoint folder name or file stem)")
    p.add_argument("--max-batch", type=int, default=64, help="samples per backend call")
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=2.0,
        help="longest a request waits for others to batch with",
    )
    p.add_argument(
        "--max-queue", type=int, default=1024, help="samples waiting before 503 + Retry-After"
    )
    p.add_argument(
        "--max-request-batch", type=int, default=256, help="samples in one request before 413"
    )
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=30.0,
        help="a request still queued after this many seconds gets 503 (default: 30)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=60.0,
        help="a request whose body has not all arrived this many seconds after its headers gets "
        "408 and its connection is closed (default: 60)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=30.0,
        help="a connection without complete request headers this many seconds after it opened "
        "or after its last response is closed, with 408 if a request had begun (default: 30)",
    )
    p.add_argument(
        "--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores but one)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own model and batcher; one "
        "process is bound by its event loop's GIL (default: 1)",
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.set_defaults(func=_serve)

    t = subparsers.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository for MODEL",
        description="Write DIR/NAME/config.pbtxt + DIR/NAME/1/model.onnx (onnxruntime) or "
        "model.plan (tensorrt) for scale-out on Triton or KServe; clients do not change.",
    )
    t.add_argument("model", help="checkpoint directory, .onnx file or TensorRT engine")
    t.add_argument("--out", required=True, help="repository folder to write")
    t.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    t.add_argument("--engine", help="TensorRT engine for --backend tensorrt")
    t.add_argument("--plugin-lib", help="stn plugin .so to ship (plugin-flavour engines)")
    t.add_argument("--name", help="model name (default: checkpoint folder name or file stem)")
    t.add_argument("--max-batch", type=int, default=64)
    t.add_argument("--max-delay-us", type=int, default=2000)
    t.add_argument("--instances", type=int, default=1)
    t.set_defaults(func=_triton_repo)

    b = subparsers.add_parser(
        "serve-bench",
        help="load-benchmark the server (concurrency 1..128 over loopback)",
        description="Runs bench/load_bench.py: raw ONNX Runtime vs the server with and without "
        "batching, or, with --server HOST:PORT, the client side against a running server. "
        "Arguments after serve-bench go to it (see serve-bench -- --help).",
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="load_bench.py arguments")
    b.set_defaults(func=_serve_bench)


# -- demo ---------------------------------------------------------------------------------------
def demo_serve(
    model_path: str | os.PathLike,
    name: str | None = None,
    n_requests: int = 16,
    backend: str = "auto",
    echo: bool = True,
    images=None,
    labels=None,
) -> dict:
    """Start the server on a free loopback port, send real tritonclient requests, check them.

    ``images`` [N, C, H, W] float32 (e.g. real test digits, prepared as the model expects) are
    sent one per request, the first ``n_requests`` of them; without them, random inputs.
    ``labels`` adds the accuracy of the answers. Returns ``{"url", "model", "answers": [top-1
    per request], "matches": bool, "latency_ms": {"p50", "p99", "mean"}}`` (+ ``"accuracy"``)
    and prints the answers and a latency line.
    """
    import numpy as np
    import tritonclient.http as httpclient

    from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
    from stn_deploy.runtime.serving.uvicorn_runner import ServerThread

    if images is not None:
        n_requests = min(n_requests, len(images))
    served_name, session, backend = resolve_model(model_path, backend)
    name = name or served_name
    shape = [d if isinstance(d, int) else 1 for d in session.inputs[0].shape[1:]]
    rng = np.random.default_rng(0)
    latencies, answers, matches = [], [], True
    try:
        with ServerThread(ServedModel(name, session), ServerConfig(port=0)) as srv:
            client = httpclient.InferenceServerClient(srv.url)
            for i in range(n_requests):
                if images is None:
                    x = rng.random((1, *shape), dtype=np.float32)
                else:
                    x = np.ascontiguousarray(images[i : i + 1], dtype=np.float32)
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                t0 = time.perf_counter()
                res = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
                latencies.append((time.perf_counter() - t0) * 1000)
                got = res.as_numpy("logits")
                matches &= bool(
                    np.allclose(got, session.infer({"input": x})["logits"], rtol=1e-4, atol=1e-5)
                )
                answers.append(int(got.argmax(axis=1)[0]))
            client.close()
    finally:
        session.close()
    lat = np.asarray(latencies)
    result = {
        "url": f"http://{srv.url}",
        "model": name,
        "backend": backend,
        "answers": answers,
        "matches": matches,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "mean": float(lat.mean()),
        },
    }
    if labels is not None:
        truth = [int(v) for v in labels[: len(answers)]]
        result["accuracy"] = sum(a == t for a, t in zip(answers, truth)) / len(answers)
    if echo:
        print(f"served {name} ({backend}) at {result['url']}; predicted classes: {answers}")
        if "accuracy" in result:
            print(f"labels: {truth}; accuracy {result['accuracy']:.0%}")
        print(
            f"{n_requests} requests over HTTP: p50 {result['latency_ms']['p50']:.2f} ms, "
            f"p99 {result['latency_ms']['p99']:.2f} ms; match local session: {matches}"
        )
    return result
