"""End to end: the real server on 127.0.0.1, the unmodified tritonclient.http client, raw HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.protocol_client import encode_infer_request
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread
from stn_deploy.runtime.session import Session


@pytest.fixture(scope="module")
def session(toy_onnx):
    with OrtSession(toy_onnx, threads=1) as sess:
        yield sess


def _x(rng, n):
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_tritonclient_end_to_end(session, rng):
    cfg = ServerConfig(port=0, max_batch=8, max_delay_ms=2, max_request_batch=16)
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("toy-stn")
        assert not client.is_model_ready("other")
        meta = client.get_model_metadata("toy-stn")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert [o["name"] for o in meta["outputs"]] == ["logits", "theta", "warped"]
        extensions = client.get_server_metadata()["extensions"]
        assert extensions == [
            "binary_tensor_data", "classification", "model_configuration", "statistics"
        ]  # fmt: skip

        for binary_in, binary_out, n in [(True, True, 3), (False, False, 2), (True, False, 1)]:
            x = _x(rng, n)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            outs = [
                httpclient.InferRequestedOutput(name, binary_data=binary_out)
                for name in ("logits", "theta")
            ]
            res = client.infer("toy-stn", [inp], outputs=outs, request_id=f"r{n}")
            want = session.infer({"input": x})
            np.testing.assert_allclose(res.as_numpy("logits"), want["logits"], rtol=1e-5)
            np.testing.assert_allclose(res.as_numpy("theta"), want["theta"], rtol=1e-5)
            assert res.as_numpy("warped") is None  # not requested, not sent
            assert res.get_response()["id"] == f"r{n}"

        x = _x(rng, 2)  # no outputs named: every output, in binary
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("toy-stn", [inp])
        np.testing.assert_allclose(res.as_numpy("warped"), np.tanh(x / 2), rtol=1e-5)

        with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
            client.infer("nope", [inp])
        assert err.value.status() == "404"
        big = httpclient.InferInput("input", [17, 1, 8, 8], "FP32")
        big.set_data_from_numpy(_x(rng, 17))
        with pytest.raises(InferenceServerException, match="limit of 16") as err:
            client.infer("toy-stn", [big])
        assert err.value.status() == "413"

        metrics = client._get("metrics", None, None).read().decode()
        assert 'stn_requests_total{code="200",model="toy-stn"} 4.0' in metrics
        assert 'stn_requests_total{code="404",model="toy-stn"} 1.0' in metrics
        assert 'stn_errors_total{kind="limit",model="toy-stn"} 1.0' in metrics
        assert "stn_batch_size_bucket" in metrics and "stn_queue_seconds_count" in metrics
        client.close()


def _binary_body(x: np.ndarray, outputs=("logits",)) -> tuple[bytes, dict]:
    return encode_infer_request({"input": x}, outputs)


def _logits_of(body: bytes, header_len: int, n: int) -> np.ndarray:
    doc = json.loads(body[:header_len])
    assert doc["outputs"][0]["shape"] == [n, 10]
    return np.frombuffer(body[header_len:], np.float32).reshape(n, 10)


BAD_REQUESTS = [
    # (body, headers, status, message fragment)
    (b"{nope", {}, 400, "invalid JSON"),
    (
        json.dumps(
            {
                "inputs": [
                    {"name": "img", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
                ]
            }
        ).encode(),
        {},
        400,
        "unknown input 'img'; the model expects input [-1,1,8,8] FP32",
    ),
    (
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 7, 8], "datatype": "FP32", "data": [0.0] * 56}
                ]
            }
        ).encode(),
        {},
        400,
        "shape [1, 1, 7, 8], expected input [-1,1,8,8] FP32",
    ),
    (
        json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 8, 8], "datatype": "INT64", "data": [0] * 64}
                ]
            }
        ).encode(),
        {},
        400,
        "datatype 'INT64', expected FP32",
    ),
    (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "data": [float("nan")] * 64,
                    }
                ]
            }
        ).encode(),
        {},
        400,
        "64 NaN/Inf values",
    ),
]


async def _load_with_bad_requests(url, session, rng):
    good = [_x(rng, int(n)) for n in rng.integers(1, 6, size=120)]
    want = [session.infer({"input": x})["logits"] for x in good]
    truncated, trunc_headers = _binary_body(_x(rng, 2))
    bad = [*BAD_REQUESTS, (truncated[:-7], trunc_headers, 400, "truncated binary payload")]
    big, big_headers = _binary_body(_x(rng, 33))
    bad.append((big, big_headers, 413, "33 samples exceeds this server's limit of 32"))
    inf = _x(rng, 3)
    inf[2, 0, 1, 5] = np.inf  # binary: checked by the batcher's worker, fails alone
    bad.append((*_binary_body(inf), 400, "1 NaN/Inf values (first at flat index 141)"))
    results: dict[int, np.ndarray] = {}
    bad_seen: list[tuple[int, int, str]] = []

    async with aiohttp.ClientSession(f"http://{url}") as http:

        async def send_good(i: int) -> None:
            body, headers = _binary_body(good[i])
            async with http.post("/v2/models/toy-stn/infer", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                hl = int(r.headers["Inference-Header-Content-Length"])
                results[i] = _logits_of(await r.read(), hl, len(good[i]))

        async def send_bad(j: int) -> None:
            body, headers, status, _ = bad[j % len(bad)]
            await asyncio.sleep(0.002 * j)  # spread them through the load run
            async with http.post("/v2/models/toy-stn/infer", data=body, headers=headers) as r:
                bad_seen.append((j % len(bad), r.status, (await r.json())["error"]))

        await asyncio.gather(
            *(send_good(i) for i in range(len(good))), *(send_bad(j) for j in range(3 * len(bad)))
        )
    return good, want, results, bad, bad_seen


def test_bad_requests_mid_load_leave_good_answers_correct(session, rng):
    cfg = ServerConfig(port=0, max_batch=16, max_delay_ms=5, max_request_batch=32)
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        good, want, results, bad, bad_seen = asyncio.run(
            _load_with_bad_requests(srv.url, session, rng)
        )
    assert sorted(results) == list(range(len(good)))
    for i, expected in enumerate(want):
        np.testing.assert_allclose(results[i], expected, rtol=1e-5, atol=1e-6)
    assert len(bad_seen) == 3 * len(bad)
    for j, status, message in bad_seen:
        assert status == bad[j][2], message
        assert bad[j][3] in message


class _Gated(Session):
    """Delegates to a real session after waiting for ``gate`` (to hold work in flight)."""

    backend = "ort"

    def __init__(self, inner: Session, gate: threading.Event) -> None:
        super().__init__()
        self.inner, self.gate = inner, gate

    def _open(self) -> None:
        self.inputs, self.outputs = self.inner.inputs, self.inner.outputs

    def _infer(self, feeds):
        self.gate.wait(10)
        return self.inner.infer(feeds)


def test_queue_full_is_503_with_retry_after_and_shutdown_finishes_in_flight(session, rng):
    gate = threading.Event()
    slow = _Gated(session, gate).open()
    cfg = ServerConfig(port=0, max_batch=2, max_delay_ms=0, max_queue=4, max_request_batch=2)
    srv = ServerThread(ServedModel("toy-stn", slow), cfg).start()
    xs = [_x(rng, 2) for _ in range(3)]  # 1 batch running behind the gate + 4 samples queued

    async def scenario():
        async with aiohttp.ClientSession(f"http://{srv.url}") as http:

            async def post(x):
                body, headers = _binary_body(x)
                async with http.post("/v2/models/toy-stn/infer", data=body, headers=headers) as r:
                    return r.status, r.headers.copy(), await r.read()

            held = [asyncio.create_task(post(xs[0]))]
            await asyncio.sleep(0.3)  # the worker has taken it and waits at the gate
            held += [asyncio.create_task(post(x)) for x in xs[1:]]
            await asyncio.sleep(0.3)
            status, headers, body = await post(xs[0])
            assert status == 503, body
            assert headers["Retry-After"] == "1"
            assert "queue full: 4 of 4 samples waiting" in json.loads(body)["error"]
            # graceful shutdown while three requests are in flight: all of them still answer
            stopper = asyncio.get_running_loop().run_in_executor(None, srv.stop)
            await asyncio.sleep(0.3)
            gate.set()
            answers = await asyncio.gather(*held)
            await stopper
            return answers

    answers = asyncio.run(scenario())
    for x, (status, headers, body) in zip(xs, answers):
        assert status == 200, body
        hl = int(headers["Inference-Header-Content-Length"])
        np.testing.assert_allclose(
            _logits_of(body, hl, 2), session.infer({"input": x})["logits"], rtol=1e-5
        )
    with pytest.raises(OSError):  # the port is closed after shutdown
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)
    assert not srv._thread.is_alive()


def test_size_limits_encoding_and_versioned_routes(session, rng):
    cfg = ServerConfig(port=0, max_body_bytes=2048)
    x = _x(rng, 2)  # 512 bytes of tensor data: fits
    big = _x(rng, 9)  # 2304 bytes: over the body limit

    async def scenario(url):
        async with aiohttp.ClientSession(f"http://{url}") as http:
            out = {}
            body, headers = _binary_body(x)
            path = "/v2/models/toy-stn/versions/1/infer"
            async with http.post(path, data=body, headers=headers) as r:
                out["versioned"] = (r.status, await r.read(), r.headers.copy())
            async with http.post("/v2/models/toy-stn/versions/2/infer", data=body,
                                 headers=headers) as r:  # fmt: skip
                out["bad_version"] = (r.status, (await r.json())["error"])
            body, headers = _binary_body(big)
            async with http.post("/v2/models/toy-stn/infer", data=body, headers=headers) as r:
                out["too_big"] = (r.status, (await r.json())["error"])
            body, headers = _binary_body(x)
            headers = {**headers, "Content-Encoding": "gzip"}
            async with http.post("/v2/models/toy-stn/infer", data=body, headers=headers) as r:
                out["gzip"] = (r.status, (await r.json())["error"])
            async with http.get("/v2/models/toy-stn/versions/1/ready") as r:
                out["ready"] = r.status
            async with http.get("/v2/models/toy-stn/infer") as r:
                out["get_infer"] = (r.status, r.headers.get("Allow"), (await r.json())["error"])
            async with http.post("/v2/model/toy-stn/infer", data=b"{}") as r:
                out["no_route"] = (r.status, (await r.json())["error"])
            return out

    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        out = asyncio.run(scenario(srv.url))
    status, body, headers = out["versioned"]
    assert status == 200
    hl = int(headers["Inference-Header-Content-Length"])
    want = session.infer({"input": x})["logits"]
    np.testing.assert_allclose(_logits_of(body, hl, 2), want, rtol=1e-5)
    assert out["bad_version"][0] == 404 and "version '2'" in out["bad_version"][1]
    assert out["too_big"][0] == 413 and "exceeds the limit of 2048" in out["too_big"][1]
    assert out["gzip"][0] == 415 and "send the body uncompressed" in out["gzip"][1]
    assert out["ready"] == 200
    # Starlette's own 404 / 405 come as the protocol's JSON error documents too
    get_infer = (405, "POST", "GET is not allowed on /v2/models/toy-stn/infer; use POST")
    assert out["get_infer"] == get_infer
    assert out["no_route"][0] == 404
    assert out["no_route"][1].startswith("no endpoint POST /v2/model/toy-stn/infer; this server")


def _raw_post_head(port: int, body: bytes, headers: dict) -> socket.socket:
    """A socket that has sent an /infer request's headers and nothing of its body yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = ["POST /v2/models/toy-stn/infer HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in {**headers, "Content-Length": len(body)}.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response, then until the server closes the connection (asserts it does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    headers = {k.lower(): v for k, v in headers.items()}
    assert len(body) == int(headers["content-length"]), "more than one response came back"
    return int(status_line.split()[1]), headers, body


def test_stalled_body_is_408_and_closed_while_others_are_served(session, rng):
    cfg = ServerConfig(port=0, max_batch=8, max_delay_ms=2, body_timeout_s=0.5)
    x = _x(rng, 1)
    body, headers = _binary_body(x)
    want = session.infer({"input": x})["logits"]
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        stalled = _raw_post_head(srv.port, body, headers)
        stalled.sendall(body[:20])  # ... and the rest never comes
        started = time.monotonic()
        # meanwhile everyone else is answered, and at once: the stalled request holds nothing
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        for _ in range(5):
            t0 = time.monotonic()
            got = client.infer("toy-stn", [inp]).as_numpy("logits")
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            assert time.monotonic() - t0 < 0.4
        status, head, err = _read_response(stalled)  # returns once the server closed it
        waited = time.monotonic() - started
        # a body sent in two parts well within the timeout is a normal request
        split = _raw_post_head(srv.port, body, {**headers, "Connection": "close"})
        split.sendall(body[:100])
        time.sleep(0.2)
        split.sendall(body[100:])
        split_status, split_head, split_body = _read_response(split)
        metrics = urllib.request.urlopen(f"http://{srv.url}/metrics").read().decode()
    assert status == 408 and head["connection"] == "close"
    assert json.loads(err)["error"] == (
        "the request body did not arrive within 0.5 s; "
        "send Content-Length bytes right after the headers"
    )
    assert 0.5 <= waited < 5.0
    assert split_status == 200
    hl = int(split_head["inference-header-content-length"])
    np.testing.assert_allclose(_logits_of(split_body, hl, 1), want, rtol=1e-5, atol=1e-6)
    assert 'stn_errors_total{kind="timeout",model="toy-stn"} 1.0' in metrics
    assert 'stn_requests_total{code="408",model="toy-stn"} 1.0' in metrics


@pytest.mark.parametrize("field", ["request_timeout_s", "body_timeout_s", "header_timeout_s"])
def test_server_config_rejects_a_non_positive_timeout(field):
    with pytest.raises(ValueError, match="body_timeout_s and header_timeout_s must be > 0"):
        ServerConfig(**{field: 0})


def test_model_configuration_extension_is_tritons_model_config(session, model_config_pb2):
    """GET .../config, read by tritonclient and parsed as Triton's ModelConfig protobuf."""
    from google.protobuf import json_format

    cfg = ServerConfig(port=0, max_batch=8, max_delay_ms=1.5, max_request_batch=32)
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        raw = client.get_model_config("toy-stn")
        assert client.get_model_config("toy-stn", model_version="1") == raw
        with pytest.raises(InferenceServerException, match="unknown model 'other'"):
            client.get_model_config("other")
        with pytest.raises(InferenceServerException, match="version '2'"):
            client.get_model_config("toy-stn", model_version="2")
    pb2 = model_config_pb2
    parsed = json_format.ParseDict(raw, pb2.ModelConfig())  # unknown fields would raise
    assert (parsed.name, parsed.platform) == ("toy-stn", "onnxruntime_onnx")
    assert parsed.max_batch_size == 32  # what one request may carry
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [(t.name, t.data_type, list(t.dims)) for t in parsed.input] == [
        ("input", pb2.TYPE_FP32, [1, 8, 8])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in parsed.output] == [
        ("logits", pb2.TYPE_FP32, [10]),
        ("theta", pb2.TYPE_FP32, [2, 3]),
        ("warped", pb2.TYPE_FP32, [1, 8, 8]),
    ]
    assert raw["input"][0]["dims"] == [1, 8, 8]  # numbers, as Triton sends them


def test_statistics_extension_counts_what_happened(session, rng, triton_protos):
    """GET .../stats via tritonclient: Triton's ModelStatisticsResponse, with the counts of the
    requests sent here (each alone, so one backend call per request) and one bad request."""
    from google.protobuf import json_format

    cfg = ServerConfig(port=0, max_batch=8, max_delay_ms=0)
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        empty = client.get_inference_statistics("toy-stn")["model_stats"][0]
        assert (empty["inference_count"], empty["execution_count"], empty["last_inference"]) == (
            0, 0, 0
        )  # fmt: skip
        before = time.time()
        for n in (2, 3, 2):
            x = _x(rng, n)
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.infer("toy-stn", [inp])
        bad = httpclient.InferInput("input", [1, 1, 8, 9], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 8, 9), np.float32))
        with pytest.raises(InferenceServerException, match="shape"):
            client.infer("toy-stn", [bad])
        stats = client.get_inference_statistics("toy-stn")
        assert client.get_inference_statistics() == stats  # GET /v2/models/stats: every model
        assert client.get_inference_statistics("toy-stn", model_version="1") == stats
        with pytest.raises(InferenceServerException, match="unknown model 'other'"):
            client.get_inference_statistics("other")
    json_format.ParseDict(stats, triton_protos[1].ModelStatisticsResponse())  # Triton's schema
    (model,) = stats["model_stats"]
    assert (model["name"], model["version"]) == ("toy-stn", "1")
    assert (model["inference_count"], model["execution_count"]) == (7, 3)
    assert before * 1000 <= model["last_inference"] <= time.time() * 1000
    inf = model["inference_stats"]
    assert (inf["success"]["count"], inf["fail"]["count"], inf["queue"]["count"]) == (3, 1, 3)
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert inf[phase]["count"] == 3 and inf[phase]["ns"] > 0
    assert inf["success"]["ns"] > inf["compute_infer"]["ns"]  # a request's whole time covers it
    assert inf["cache_hit"] == inf["cache_miss"] == {"count": 0, "ns": 0}
    by_size = {b["batch_size"]: b for b in model["batch_stats"]}
    assert sorted(by_size) == [2, 3]
    assert [by_size[k]["compute_infer"]["count"] for k in (2, 3)] == [2, 1]


def test_classification_extension_returns_the_top_classes(session, rng):
    """InferRequestedOutput(class_count=k): the k best "score:index" per sample, binary or JSON;
    only [batch, classes] outputs, and k must be a whole number."""
    x = _x(rng, 4)
    logits = session.infer({"input": x})["logits"]
    best = np.argsort(-logits, axis=1, kind="stable")
    with ServerThread(ServedModel("toy-stn", session), ServerConfig(port=0)) as srv:
        client = httpclient.InferenceServerClient(srv.url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for binary in (True, False):
            outs = [
                httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3),
                httpclient.InferRequestedOutput("theta", binary_data=binary),
            ]
            res = client.infer("toy-stn", [inp], outputs=outs)
            top = res.as_numpy("logits")
            assert top.shape == (4, 3)
            assert res.get_output("logits")["datatype"] == "BYTES"
            for row in range(4):
                pairs = [(s if isinstance(s, str) else s.decode()).split(":") for s in top[row]]
                assert [int(i) for _, i in pairs] == list(best[row, :3])
                np.testing.assert_allclose([float(v) for v, _ in pairs], logits[row, best[row, :3]],
                                           atol=1e-6)  # fmt: skip
            np.testing.assert_allclose(res.as_numpy("theta"), session.infer({"input": x})["theta"],
                                       rtol=1e-5)  # fmt: skip
        everything = httpclient.InferRequestedOutput("logits", class_count=50)
        assert client.infer("toy-stn", [inp], outputs=[everything]).as_numpy("logits").shape == (
            4, 10
        )  # fmt: skip
        wrong = httpclient.InferRequestedOutput("theta", class_count=2)
        with pytest.raises(InferenceServerException, match="shape \\[4, 2, 3\\].*classes"):
            client.infer("toy-stn", [inp], outputs=[wrong])
        negative = httpclient.InferRequestedOutput("logits", class_count=-1)
        with pytest.raises(InferenceServerException, match="whole number of classes >= 1"):
            client.infer("toy-stn", [inp], outputs=[negative])
