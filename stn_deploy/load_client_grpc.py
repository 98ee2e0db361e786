"""A lean KServe v2 gRPC load client: prebuilt ModelInferRequest bytes over grpc.aio channels.

The gRPC twin of :mod:`stn_deploy.load_client` (same :class:`~stn_deploy.load_client.LevelResult`,
same CPU accounting, every answer checked after the timed window). Requests are serialized
before the clock starts and sent as bytes (no protobuf work per call in the client); each
request carries its input as ``raw_input_contents`` and asks for ``logits``, as tritonclient
does. Answers may hold the logits as raw_output_contents (Triton, stn-deploy) or as typed
``fp32_contents`` (MLServer); both are checked. Works against any KServe v2 gRPC server.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from stn_deploy.load_client import (
    LevelResult,
    close_enough,
    inputs_and_expected,
    own_cpu_s,
    process_cpu_split,
)

__all__ = ["build_grpc_requests", "check_grpc_answer", "run_grpc_level", "MODEL_INFER"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def build_grpc_requests(path, name: str, n: int, seed: int = 0, samples: int = 1):
    """n serialized ModelInferRequests (``samples`` each) and the logits each must get."""
    from tritonclient.grpc import service_pb2

    xs, expected = inputs_and_expected(path, n, seed, samples)
    requests = []
    for x in xs:
        message = service_pb2.ModelInferRequest(
            model_name=name,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=list(x.shape)
                )
            ],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[np.ascontiguousarray(x, "<f4").tobytes()],
        )
        requests.append(message.SerializeToString())
    return requests, expected


def check_grpc_answer(raw: bytes, expected: np.ndarray) -> bool:
    """Does a serialized ModelInferResponse hold the expected logits (raw or typed)?"""
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    try:
        response = service_pb2.ModelInferResponse.FromString(raw)
    except DecodeError:
        return False
    for i, out in enumerate(response.outputs):
        if out.name != "logits":
            continue
        if list(out.shape) != list(expected.shape):
            return False
        if response.raw_output_contents:
            got = np.frombuffer(response.raw_output_contents[i], "<f4")
        else:
            got = np.asarray(out.contents.fp32_contents, np.float32)
        return got.size == expected.size and close_enough(got.reshape(expected.shape), expected)
    return False


async def run_grpc_level(
    host: str,
    port: int,
    requests: list[bytes],
    expected,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    pid: int | None = None,
    samples: int = 1,
    check: bool = True,
    channels: int = 8,
) -> LevelResult:
    """``concurrency`` streams of calls over ``min(channels, concurrency)`` connections, each
    stream sending its next request when answered."""
    import grpc

    # a connection per channel (grpc would otherwise share one among channels to one target)
    options = [("grpc.use_local_subchannel_pool", 1)]
    pool = [grpc.aio.insecure_channel(f"{host}:{port}", options=options)
            for _ in range(max(1, min(channels, concurrency)))]  # fmt: skip
    calls = [ch.unary_unary(MODEL_INFER) for ch in pool]  # bytes in, bytes out
    for call in calls:  # connect (and warm) every channel before the clock starts
        await call(requests[0])
    latencies: list[float] = []
    answers: list[tuple[int, bytes]] = []
    counters = {"next": 0, "errors": 0}
    stop_at = time.perf_counter() + max_seconds

    async def stream(call) -> None:
        while counters["next"] < max_requests and time.perf_counter() < stop_at:
            i = counters["next"]
            counters["next"] += 1
            k = i % len(requests)
            t0 = time.perf_counter()
            try:
                reply = await call(requests[k])
            except grpc.aio.AioRpcError:
                latencies.append(time.perf_counter() - t0)
                counters["errors"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if check:
                answers.append((k, reply))

    start, cpu0, server0 = time.perf_counter(), own_cpu_s(), process_cpu_split(pid)
    await asyncio.gather(*(stream(calls[j % len(calls)]) for j in range(concurrency)))
    seconds = time.perf_counter() - start
    cpu, server1 = own_cpu_s() - cpu0, process_cpu_split(pid)
    for ch in pool:
        await ch.close()
    mismatches = sum(not check_grpc_answer(b, expected[k]) for k, b in answers)
    n = max(1, len(latencies))
    by_thread = None
    if server0 is not None and server1 is not None:
        by_thread = {k: round((server1[k] - server0[k]) * 1000 / n, 4) for k in server1}
    lat = np.asarray(latencies) * 1000
    return LevelResult(
        concurrency=concurrency, requests=len(latencies), errors=counters["errors"],
        mismatches=mismatches, seconds=round(seconds, 3),
        throughput=round(len(latencies) * samples / seconds, 1),
        p50_ms=round(float(np.percentile(lat, 50)), 3),
        p99_ms=round(float(np.percentile(lat, 99)), 3),
        client_cpu_ms_per_request=round(cpu * 1000 / n, 4),
        server_cpu_ms_per_request=None if by_thread is None else round(sum(by_thread.values()), 4),
        server_cpu_ms_per_request_by_thread=by_thread,
    )  # fmt: skip
