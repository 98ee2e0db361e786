"""Hostile input over real sockets: malformed bodies, lying headers, bytes that are not HTTP.

Every case gets its own 4xx with a JSON ``{"error": ...}`` saying what was wrong, while valid
requests sent alongside on other connections keep getting their own correct answers.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.protocol_client import encode_infer_request
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread

pytest.importorskip("httptools", reason="JSON answers to non-HTTP bytes hook httptools' protocol")

PATH = "/v2/models/toy-stn/infer"
LIMIT = 256 * 1024  # the server's body limit in this test


def _post(body: bytes, path: str = PATH, method: str = "POST", **headers: str) -> bytes:
    """A whole HTTP/1.1 request; headers as given (Content-Length unless one is given)."""
    given = {k.replace("_", "-"): v for k, v in headers.items()}
    fields = {"Host": "x", "Content-Length": str(len(body)), "Connection": "close", **given}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def _entry(**changes) -> dict:
    entry = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def _doc(*entries, **top) -> bytes:
    return json.dumps({"inputs": list(entries or [_entry()]), **top}).encode()


def _binary(n: int = 1, **header_changes) -> tuple[bytes, int]:
    """A binary-tensor body and the true length of its JSON header."""
    x = np.full((n, 1, 8, 8), 0.5, np.float32)
    body, headers = encode_infer_request({"input": x})
    return body, int(headers["Inference-Header-Content-Length"])


_BIN, _BIN_LEN = _binary()
_BIN_HEADER = json.loads(_BIN[:_BIN_LEN])


def _bin_with(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return _post(raw + payload, **{"Inference-Header-Content-Length": str(len(raw))})


def _header_with(**changes) -> dict:
    header = json.loads(json.dumps(_BIN_HEADER))
    header["inputs"][0].update(changes)
    return header


def _cases() -> list[tuple[str, bytes, int, str]]:
    """(case id, raw request bytes, expected status, fragment of the expected error)."""
    payload = _BIN[_BIN_LEN:]
    hl = "Inference-Header-Content-Length"
    bodies = [
        ("empty body", b"", 400, "invalid JSON"),
        ("not json", b"{nope", 400, "invalid JSON"),
        ("truncated json", _doc()[:-9], 400, "invalid JSON"),
        ("json array", b"[1, 2]", 400, 'non-empty "inputs"'),
        ("json string", b'"inputs"', 400, 'non-empty "inputs"'),
        ("json null", b"null", 400, 'non-empty "inputs"'),
        ("nested 200k", b"[" * 200_000, 400, "nested deeper than 1024"),
        ("nested objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, "nested deeper than 1024"),
        ("nested in data", _doc(_entry(data=json.loads("[" * 900 + "1" + "]" * 900))), 400,
         "not a list of FP32"),
        ("invalid utf-8", b'{"inputs": "\xff\xfe"}', 400, "invalid JSON"),
        ("no inputs", b'{"outputs": []}', 400, 'non-empty "inputs"'),
        ("inputs empty", _doc(inputs=[]).replace(b'"inputs": [{', b'"x": [{'), 400, "inputs"),
        ("inputs object", b'{"inputs": {"name": "input"}}', 400, 'non-empty "inputs"'),
        ("input not object", b'{"inputs": [7]}', 400, 'an object with a "name"'),
        ("name missing", _doc(_entry(name=None)), 400, 'an object with a "name"'),
        ("name unknown", _doc(_entry(name="image")), 400, "unknown input 'image'"),
        ("name twice", _doc(_entry(), _entry()), 400, "appears twice"),
        ("datatype wrong", _doc(_entry(datatype="FP64")), 400, "expected FP32"),
        ("datatype missing", _doc(_entry(datatype=None)), 400, "datatype None"),
        ("datatype number", _doc(_entry(datatype=32)), 400, "datatype 32"),
        ("shape missing", _doc(_entry(shape=None)), 400, "list of ints >= 0"),
        ("shape negative", _doc(_entry(shape=[-1, 1, 8, 8])), 400, "list of ints >= 0"),
        ("shape floats", _doc(_entry(shape=[1.0, 1, 8, 8])), 400, "list of ints >= 0"),
        ("shape rank", _doc(_entry(shape=[1, 8, 8])), 400, "expected input [-1,1,8,8] FP32"),
        ("shape huge", _doc(_entry(shape=[10**15, 1, 8, 8])), 400, "values for shape"),
        ("shape 2**70", _doc(_entry(shape=[2**70, 1, 8, 8])), 400, "list of ints >= 0"),
        ("batch zero", _doc(_entry(shape=[0, 1, 8, 8], data=[])), 400, "batch size >= 1"),
        ("data missing", _doc(_entry(data=None)), 400, 'neither "data" nor binary_data_size'),
        ("data short", _doc(_entry(data=[0.5] * 63)), 400, "63 values for shape"),
        ("data strings", _doc(_entry(data=["a"] * 64)), 400, "not a list of FP32"),
        ("data object", _doc(_entry(data={"a": 1})), 400, '"data" must be an array'),
        ("data ragged", _doc(_entry(data=[[0.5] * 8] * 7 + [[0.5] * 7])), 400,
         "not a list of FP32"),
        ("data overflow", _doc(_entry(data=[1e39] * 64)), 400, "beyond FP32's range"),
        ("data NaN token", _doc(_entry(data=[float("nan")] * 64)), 400, "64 NaN/Inf values"),
        ("top parameters list", _doc(parameters=[]), 400, '"parameters" must be a JSON object'),
        ("top parameters string", _doc(parameters="x"), 400, '"parameters" must be a JSON'),
        ("binary_data_output string", _doc(parameters={"binary_data_output": "yes"}), 400,
         "must be true or false"),
        ("input parameters list", _doc(_entry(parameters=[])), 400, "got array"),
        ("outputs object", _doc(outputs={"name": "logits"}), 400, '"outputs" must be a list'),
        ("outputs unknown", _doc(outputs=[{"name": "probs"}]), 400, "unknown output 'probs'"),
        ("outputs twice", _doc(outputs=[{"name": "logits"}] * 2), 400, "more than once"),
        ("outputs not objects", _doc(outputs=["logits"]), 400, "unknown output None"),
        ("output parameters list", _doc(outputs=[{"name": "logits", "parameters": []}]), 400,
         "got array"),
        ("classification negative",
         _doc(outputs=[{"name": "logits", "parameters": {"classification": -2}}]), 400,
         "whole number of classes"),
        ("classification on theta",
         _doc(outputs=[{"name": "theta", "parameters": {"classification": 2}}]), 400,
         "classification needs [batch, classes]"),
        ("id number", _doc(id=12), 400, '"id" must be a string'),
        ("too many samples", _doc(_entry(shape=[33, 1, 8, 8], data=[0.5] * 33 * 64)), 413,
         "limit of 32 per request"),
    ]
    lying = [
        ("data and binary size", _bin_with(_header_with(data=[0.5] * 64), payload), 400,
         'has both "data" and binary_data_size'),
        ("header length words", _post(_BIN, **{hl: "twelve"}), 400, "must be an integer"),
        ("header length negative", _post(_BIN, **{hl: "-5"}), 400, "at most the body size"),
        ("header length zero", _post(_BIN, **{hl: "0"}), 400, "at most the body size"),
        ("header length past body", _post(_BIN, **{hl: str(len(_BIN) + 1)}), 400,
         "at most the body size"),
        ("header length mid json", _post(_BIN, **{hl: str(_BIN_LEN - 10)}), 400, "invalid JSON"),
        ("header length into tensor", _post(_BIN, **{hl: str(_BIN_LEN + 4)}), 400,
         "invalid JSON"),
        ("header length missing", _post(_BIN), 400, "needs the Inference-Header-Content-Length"),
        ("binary size too big", _bin_with(_header_with(parameters={"binary_data_size": 512}),
                                          payload), 400, "needs 256 bytes"),
        ("binary size too small", _bin_with(_header_with(parameters={"binary_data_size": 4}),
                                            payload), 400, "needs 256 bytes"),
        ("binary size string", _bin_with(_header_with(parameters={"binary_data_size": "256"}),
                                         payload), 400, "binary_data_size is '256'"),
        ("binary size bool", _bin_with(_header_with(parameters={"binary_data_size": True}),
                                       payload), 400, "binary_data_size is True"),
        ("binary payload short", _bin_with(_BIN_HEADER, payload[:-3]), 400,
         "truncated binary payload"),
        ("binary payload long", _bin_with(_BIN_HEADER, payload + b"\0" * 8), 400,
         "8 bytes follow the inputs"),
        ("binary NaN", _bin_with(_BIN_HEADER, np.full(64, np.nan, np.float32).tobytes()), 400,
         "64 NaN/Inf values"),
        ("gzip body", _post(_doc(), Content_Encoding="gzip"), 415, "not supported"),
        # answered before the body is read: on a connection the client keeps, the server reads
        # and drops the rest (with "Connection: close" the client may get a reset instead)
        ("body over limit", _post(b"0" * (LIMIT + 1), Connection="keep-alive"), 413,
         "exceeds the limit"),
        ("declared over limit", _post(b"{}", Content_Length=str(10 * LIMIT)) , 413,
         "exceeds the limit"),
        ("unknown model", _post(_doc(), path="/v2/models/other/infer"), 404, "unknown model"),
        ("unknown version", _post(_doc(), path="/v2/models/toy-stn/versions/9/infer"), 404,
         "version '9'"),
        ("unknown path", _post(_doc(), path="/v3/infer"), 404, "no endpoint POST /v3/infer"),
        ("get on infer", _post(b"", method="GET"), 405, "GET is not allowed"),
        ("delete on infer", _post(b"", method="DELETE"), 405, "DELETE is not allowed"),
    ]
    raw = [
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400,
         "not an HTTP/1.1 request"),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "not an HTTP/1.1 request"),
        ("bad version", b"POST /v2 HTTP/7.3\r\nHost: x\r\n\r\n", 400, "not an HTTP/1.1"),
        ("no version", b"POST " + PATH.encode() + b"\r\n\r\n", 400, "zero-length, empty"),
        ("header without colon", b"POST / HTTP/1.1\r\nHost x\r\n\r\n", 400, "not an HTTP/1.1"),
        ("nul in header", b"POST / HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400, "not an HTTP/1.1"),
        ("content-length words", _post(_doc(), Content_Length="ten"), 400, "not an HTTP/1.1"),
        ("content-length twice", _post(_doc(), Content_Length="5, 5"), 400, "not an HTTP/1.1"),
        ("bad chunk size", _post(b"zz\r\n{}\r\n0\r\n\r\n", Content_Length=None,
                                 Transfer_Encoding="chunked"), 400, "not an HTTP/1.1"),
        ("websocket upgrade", _post(b"", method="GET", Upgrade="websocket",
                                    Connection="Upgrade", Sec_WebSocket_Key="x",
                                    Sec_WebSocket_Version="13"), 405, "GET is not allowed"),
    ]  # fmt: skip
    return [(case, _post(body), *rest) for case, body, *rest in bodies] + lying + raw


CASES = _cases()


def test_there_are_at_least_fifty_cases_and_each_is_unique():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({c[1] for c in CASES}) == len(CASES)


async def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection; read one response (to Content-Length or close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        writer.close()
        return 0, {}, f"no response: {exc!r}".encode()
    try:
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key:
                headers[key.strip().lower()] = value.strip()
        try:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            return status, headers, f"no body: {exc!r}".encode()
        return status, headers, body
    finally:
        writer.close()


async def _valid_stream(port: int, session, rng, stop: asyncio.Event, answers: list) -> None:
    """Keep-alive connection sending valid requests (binary and JSON), checking each answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while not stop.is_set() or i < 5:
            x = rng.random((1 + i % 3, 1, 8, 8), dtype=np.float32)
            if i % 2:
                body, headers = encode_infer_request({"input": x})
            else:
                doc = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}],
                       "outputs": [{"name": "logits"}]}  # fmt: skip
                body, headers = json.dumps(doc).encode(), {"Content-Type": "application/json"}
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                .encode() + body
            )
            status, out = await _read_keepalive(reader)
            answers.append((status, x, out))
            i += 1
    finally:
        writer.close()


async def _read_keepalive(reader) -> tuple[int, np.ndarray | None]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    body = await reader.readexactly(int(headers["content-length"]))
    status = int(head[0].split(" ", 2)[1])
    if status != 200:
        return status, None
    n = headers.get("inference-header-content-length")
    if n is None:
        (out,) = json.loads(body)["outputs"]
        return status, np.asarray(out["data"], np.float32).reshape(out["shape"])
    doc = json.loads(body[: int(n)])
    (out,) = doc["outputs"]
    return status, np.frombuffer(body[int(n) :], np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def served(toy_onnx):
    with OrtSession(toy_onnx, threads=1) as session:
        cfg = ServerConfig(port=0, max_batch=8, max_delay_ms=2, max_request_batch=32,
                           max_body_bytes=LIMIT)  # fmt: skip
        with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
            yield srv, session


async def _run_all(port: int, session, rng):
    stop, answers = asyncio.Event(), []
    streams = [asyncio.create_task(_valid_stream(port, session, rng, stop, answers))
               for _ in range(3)]  # fmt: skip
    results = []
    for start in range(0, len(CASES), 8):  # 8 hostile connections at a time, among the valid
        batch = CASES[start : start + 8]
        results += await asyncio.gather(*(_exchange(port, raw) for _, raw, _, _ in batch))
    stop.set()
    await asyncio.gather(*streams)
    return results, answers


def test_every_hostile_request_gets_its_4xx_json_error_and_valid_ones_stay_right(served, rng):
    srv, session = served
    results, answers = asyncio.run(_run_all(srv.port, session, rng))
    wrong = []
    for (case, _, status, fragment), (got, headers, body) in zip(CASES, results):
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            error = None
        ok = (
            got == status
            and headers.get("content-type") == "application/json"
            and isinstance(error, str)
            and fragment in error
        )
        if not ok:
            wrong.append((case, status, got, headers.get("content-type"), body[:200]))
    assert not wrong, "\n".join(map(str, wrong))
    assert len(answers) >= 3 * 5
    for status, x, out in answers:
        assert status == 200
        np.testing.assert_allclose(out, session.infer({"input": x})["logits"], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_the_server_still_answers_after_the_abuse(served, rng):
    srv, session = served
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:  # a client that vanishes
        sock.sendall(_post(_doc())[:-20])
    x = rng.random((2, 1, 8, 8), dtype=np.float32)
    body, headers = encode_infer_request({"input": x})
    status, out = asyncio.run(_one(srv.port, _post(body, **headers)))
    assert status == 200
    np.testing.assert_allclose(out, session.infer({"input": x})["logits"], rtol=1e-5, atol=1e-6)


async def _one(port: int, raw: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await _read_keepalive(reader)
    finally:
        writer.close()
