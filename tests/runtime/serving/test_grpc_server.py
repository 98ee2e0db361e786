"""End to end over gRPC: the real server, the unmodified tritonclient.grpc (sync and aio) and
gRPC health checking; one batcher for both protocols; hostile messages leave it serving."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread

NAME = "toy-stn"


@pytest.fixture(scope="module")
def session(toy_onnx):
    with OrtSession(toy_onnx, threads=1) as sess:
        yield sess


@pytest.fixture(scope="module")
def server(session):
    cfg = ServerConfig(port=0, grpc_port=0, max_batch=8, max_delay_ms=2, max_request_batch=16,
                       max_body_bytes=64 * 1024)  # fmt: skip
    with ServerThread(ServedModel(NAME, session), cfg) as srv:
        yield srv


def _input(x, module=grpcclient, datatype="FP32"):
    inp = module.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def test_sync_client_health_metadata_config_and_inference(server, session, rng, model_config_pb2):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("other") and not client.is_model_ready(NAME, "2")
    assert client.get_server_metadata(as_json=True)["extensions"] == [
        "binary_tensor_data", "classification", "model_configuration", "statistics"
    ]  # fmt: skip
    meta = client.get_model_metadata(NAME, as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "theta", "warped"]
    config = client.get_model_config(NAME).config
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (16,
                                                                                            2000)
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [10]), ("theta", [2, 3]), ("warped", [1, 8, 8])
    ]  # fmt: skip
    for n in (1, 3, 16):
        x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
        outs = [grpcclient.InferRequestedOutput("theta"), grpcclient.InferRequestedOutput("logits")]
        res = client.infer(NAME, [_input(x)], outputs=outs, request_id=f"g{n}")
        want = session.infer({"input": x})
        np.testing.assert_allclose(res.as_numpy("logits"), want["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.as_numpy("theta"), want["theta"], rtol=1e-5, atol=1e-6)
        assert res.as_numpy("warped") is None  # not requested, not sent
        assert res.get_response().id == f"g{n}"
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    res = client.infer(NAME, [_input(x)], model_version="1")  # no outputs named: all of them
    np.testing.assert_allclose(res.as_numpy("warped"), np.tanh(x / 2), rtol=1e-5, atol=1e-6)
    top = client.infer(NAME, [_input(x)], outputs=[grpcclient.InferRequestedOutput("logits",
                                                                                  class_count=2)])
    best = np.argsort(-session.infer({"input": x})["logits"], axis=1)[:, :2]
    assert [[int(s.split(b":")[1]) for s in row] for row in top.as_numpy("logits")] == best.tolist()
    client.close()


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        (lambda c, x: c.infer("nope", [_input(x)]), "NOT_FOUND", "unknown model 'nope'"),
        (lambda c, x: c.infer(NAME, [_input(x)], model_version="3"), "NOT_FOUND", "version '3'"),
        (lambda c, x: c.get_model_metadata("nope"), "NOT_FOUND", "unknown model 'nope'"),
        (lambda c, x: c.get_model_config("nope"), "NOT_FOUND", "unknown model 'nope'"),
        (lambda c, x: c.get_inference_statistics("nope"), "NOT_FOUND", "unknown model"),
        (lambda c, x: c.infer(NAME, [_input(np.zeros((17, 1, 8, 8), np.float32))]),
         "RESOURCE_EXHAUSTED", "batch of 17 samples exceeds this server's limit of 16"),
        (lambda c, x: c.infer(NAME, [_input(np.full((2, 1, 8, 8), np.nan, np.float32))]),
         "INVALID_ARGUMENT", "128 NaN/Inf values"),
        (lambda c, x: c.infer(NAME, [_input(x)], outputs=[grpcclient.InferRequestedOutput("p")]),
         "INVALID_ARGUMENT", "unknown output 'p'; the model has logits, theta, warped"),
        (lambda c, x: c.infer(NAME, [_input(x.astype(np.float64), datatype="FP64")]),
         "INVALID_ARGUMENT",
         "datatype 'FP64', expected FP32"),
        (lambda c, x: c.infer(NAME, [_input(np.zeros((1, 1, 7, 8), np.float32))]),
         "INVALID_ARGUMENT", "shape [1, 1, 7, 8], expected input [-1,1,8,8] FP32"),
        (lambda c, x: c.infer(NAME, [_input(np.zeros((300, 1, 8, 8), np.float32))]),
         "RESOURCE_EXHAUSTED", "Received message larger than max"),
        (lambda c, x: c.get_model_repository_index(), "UNIMPLEMENTED", ""),
    ],
)
def test_failures_are_grpc_status_codes_with_the_http_messages(server, rng, call, code,
                                                               fragment):  # fmt: skip
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    with pytest.raises(InferenceServerException) as err:
        call(client, x)
    assert err.value.status() == f"StatusCode.{code}"
    assert fragment in err.value.message()
    client.close()


def test_aio_client_concurrent_requests_batch_and_each_gets_its_answer(server, session, rng):
    xs = [rng.standard_normal((int(n), 1, 8, 8)).astype(np.float32)
          for n in rng.integers(1, 4, size=48)]  # fmt: skip

    async def run():
        client = aioclient.InferenceServerClient(server.grpc_url)
        before = (await client.get_inference_statistics(NAME)).model_stats[0]
        results = await asyncio.gather(*(client.infer(NAME, [_input(x, aioclient)],
                                                      request_id=str(i))
                                         for i, x in enumerate(xs)))  # fmt: skip
        after = (await client.get_inference_statistics(NAME)).model_stats[0]
        await client.close()
        return before, results, after

    before, results, after = asyncio.run(run())
    for i, (x, res) in enumerate(zip(xs, results)):
        assert res.get_response().id == str(i)
        np.testing.assert_allclose(res.as_numpy("logits"), session.infer({"input": x})["logits"],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    samples = sum(len(x) for x in xs)
    assert after.inference_count - before.inference_count == samples
    calls = after.execution_count - before.execution_count
    assert calls < len(xs)  # concurrent requests shared backend calls
    assert after.inference_stats.success.count - before.inference_stats.success.count == len(xs)


def test_http_and_grpc_share_one_batcher(server, session, rng):
    """Both protocols at once, each answer its own; the statistics count both."""
    stats = grpcclient.InferenceServerClient(server.grpc_url)
    before = stats.get_inference_statistics(NAME).model_stats[0].inference_stats.success.count
    answers, errors = {}, []

    def send(kind: str, i: int) -> None:
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        try:
            if kind == "grpc":
                c = grpcclient.InferenceServerClient(server.grpc_url)
                got = c.infer(NAME, [_input(x)]).as_numpy("logits")
            else:
                c = httpclient.InferenceServerClient(server.url)
                got = c.infer(NAME, [_input(x, httpclient)]).as_numpy("logits")
            c.close()
            answers[(kind, i)] = (x, got)
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k, i)) for i in range(12)
               for k in ("grpc", "http")]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(answers) == 24
    for x, got in answers.values():
        np.testing.assert_allclose(got, session.infer({"input": x})["logits"], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip
    after = stats.get_inference_statistics(NAME).model_stats[0].inference_stats.success.count
    assert after - before == 24
    stats.close()


def _stub(url):
    channel = grpc.insecure_channel(url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _typed_request(values, **changes):
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                            shape=[1, 1, 8, 8])  # fmt: skip
    tensor.contents.fp32_contents.extend(values)
    request = service_pb2.ModelInferRequest(model_name=NAME, inputs=[tensor])
    for key, value in changes.items():
        setattr(request, key, value)
    return request


def test_typed_contents_and_hostile_messages_over_the_wire(server, session, rng):
    channel, stub = _stub(server.grpc_url)
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    reply = stub.ModelInfer(_typed_request(x.ravel().tolist()))
    (logits,) = [np.frombuffer(raw, np.float32) for o, raw in
                 zip(reply.outputs, reply.raw_output_contents) if o.name == "logits"]  # fmt: skip
    np.testing.assert_allclose(logits.reshape(1, 10), session.infer({"input": x})["logits"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    raw_short = _typed_request([])
    raw_short.raw_input_contents.append(x.tobytes()[:-1])
    two_raw = _typed_request([])
    two_raw.raw_input_contents.extend([x.tobytes()] * 2)
    int_typed = service_pb2.ModelInferRequest(model_name=NAME, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="INT32",
                                                       shape=[1, 1, 8, 8])])  # fmt: skip
    hostile = [
        (raw_short, "raw_input_contents holds 255 bytes, but shape [1, 1, 8, 8] of FP32 needs 256"),
        (two_raw, "raw_input_contents has 2 entries for 1 inputs"),
        (int_typed, "datatype 'INT32', expected FP32"),
        (_typed_request([0.5] * 63), "63 values for shape [1, 1, 8, 8], expected 64"),
        (_typed_request([0.5] * 64, model_name=""), "unknown model ''"),
    ]
    for request, fragment in hostile:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        expected = "NOT_FOUND" if "unknown model" in fragment else "INVALID_ARGUMENT"
        assert err.value.code().name == expected and fragment in err.value.details(), fragment
    garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for body in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 4):
        with pytest.raises(grpc.RpcError) as err:
            garbage(body)
        assert err.value.code().name == "INVALID_ARGUMENT"
        assert "not a valid ModelInferRequest protobuf message" in err.value.details()
    reply = stub.ModelInfer(_typed_request(x.ravel().tolist()))  # and it still serves
    assert reply.model_name == NAME and len(reply.raw_output_contents) == 3
    channel.close()


def test_grpc_health_checking(server):
    channel = grpc.insecure_channel(server.grpc_url)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service=NAME)).status == serving
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="other"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_shutdown_turns_health_to_not_serving(session):
    cfg = ServerConfig(port=0, grpc_port=0, graceful_timeout_s=20)
    srv = ServerThread(ServedModel(NAME, session), cfg).start()
    started = time.monotonic()
    channel = grpc.insecure_channel(srv.grpc_url)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=NAME))
    first = next(watch)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    statuses = [first.status]
    with contextlib.suppress(grpc.RpcError):  # the server goes away after saying so
        for reply in watch:
            statuses.append(reply.status)
    stopper.join(30)
    assert time.monotonic() - started < 10  # the open watch did not hold the stop for 20 s
    channel.close()
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses[1:], statuses
