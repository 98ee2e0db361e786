"""`stn-deploy serve` as a process: JSON-line logs, SIGTERM finishes in-flight work and exits 0."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np

from stn_deploy.runtime.serving.logs import JsonLineFormatter


def test_json_line_formatter_keeps_extras():
    record = logging.LogRecord("stn_deploy.runtime.server", logging.INFO, __file__, 1,
                               "request failed", None, None)  # fmt: skip
    record.status = 400
    record.kind = "bad_request"
    doc = json.loads(JsonLineFormatter().format(record))
    assert doc["msg"] == "request failed" and doc["level"] == "info"
    assert (doc["status"], doc["kind"]) == (400, "bad_request")
    assert doc["ts"].endswith("Z")


def test_serve_command_logs_json_and_stops_gracefully_on_sigterm(toy_onnx, rng, free_port):
    port = free_port
    proc = subprocess.Popen(
        [sys.executable, "-m", "stn_deploy.cli", "serve", str(toy_onnx), "--port", str(port),
         "--backend", "ort", "--max-batch", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 1, 8, 8],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        reply = json.load(urllib.request.urlopen(base + "/v2/models/toy-stn/infer", body.encode()))
        logits = reply["outputs"][0]
        assert logits["name"] == "logits" and logits["shape"] == [2, 10]
        bad = urllib.request.Request(base + "/v2/models/toy-stn/infer", b"{oops")
        try:
            urllib.request.urlopen(bad)
            raise AssertionError("a bad request was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    messages = [doc["msg"] for doc in lines]
    assert "serving" in messages and "stopped" in messages
    failed = next(doc for doc in lines if doc["msg"] == "request failed")
    assert failed["status"] == 400 and "invalid JSON" in failed["error"]
