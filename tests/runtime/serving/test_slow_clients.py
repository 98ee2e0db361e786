"""Clients that stall on their request headers: closed (408 if a request had begun), others served.

These also pin the uvicorn protocol methods runtime/serving/slow_clients.py hooks: if an upgrade of
uvicorn renames them, the stalled connections here stay open and the tests fail.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread
from stn_deploy.runtime.session import Session

pytest.importorskip("httptools", reason="header timeouts need uvicorn's httptools protocol")

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def session(toy_onnx):
    with OrtSession(toy_onnx, threads=1) as sess:
        yield sess


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic()


def _infer_json(port: int, x: np.ndarray) -> dict:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()  # fmt: skip
    url = f"http://127.0.0.1:{port}/v2/models/toy-stn/infer"
    return json.load(urllib.request.urlopen(url, body, timeout=10))


def test_connections_without_complete_headers_are_closed_and_the_rest_served(session, rng):
    cfg = ServerConfig(port=0, header_timeout_s=TIMEOUT)
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    want = session.infer({"input": x})["logits"]
    with ServerThread(ServedModel("toy-stn", session), cfg) as srv:
        silent, partial, second = _connect(srv.port), _connect(srv.port), _connect(srv.port)
        started = time.monotonic()
        partial.sendall(b"POST /v2/models/toy-stn/infer HTTP/1.1\r\nHost: t\r\nContent-Le")
        # a keep-alive connection: one whole request, then a second one that stalls
        second.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert second.recv(65536).startswith(b"HTTP/1.1 200")
        second.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
        for _ in range(3):  # meanwhile the others are served as usual
            got = _infer_json(srv.port, x)["outputs"][0]
            np.testing.assert_allclose(np.reshape(got["data"], (1, 10)), want, rtol=1e-5)
        silent_data, silent_at = _until_closed(silent)
        partial_data, partial_at = _until_closed(partial)
        second_data, _ = _until_closed(second)
    assert silent_data == b""  # it never asked for anything: closed without a word
    for data in (partial_data, second_data):
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout")
        assert b"connection: close" in head
        assert json.loads(body) == {
            "error": "request headers did not arrive within 0.5 s; send the whole request at once"
        }
    assert TIMEOUT <= silent_at - started < 5 and TIMEOUT <= partial_at - started < 5


class _Slow(Session):
    """Takes ``delay`` seconds per batch: a request busy far longer than the header timeout."""

    backend = "ort"

    def __init__(self, inner: Session, delay: float) -> None:
        super().__init__()
        self.inner, self.delay = inner, delay

    def _open(self) -> None:
        self.inputs, self.outputs = self.inner.inputs, self.inner.outputs

    def _infer(self, feeds):
        time.sleep(self.delay)
        return self.inner.infer(feeds)


def test_a_request_in_progress_is_not_a_stalled_one(session, rng):
    cfg = ServerConfig(port=0, header_timeout_s=TIMEOUT)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    slow = _Slow(session, delay=3 * TIMEOUT).open()
    results: list[dict] = []
    with ServerThread(ServedModel("toy-stn", slow), cfg) as srv:
        worker = threading.Thread(target=lambda: results.append(_infer_json(srv.port, x)))
        worker.start()
        worker.join(20)
    got = results[0]["outputs"][0]
    np.testing.assert_allclose(
        np.reshape(got["data"], (2, 10)), session.infer({"input": x})["logits"], rtol=1e-5
    )
