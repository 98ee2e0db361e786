"""`stn-deploy serve --workers N`: several processes on one port, metrics summed, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from stn_deploy.runtime.ort import OrtSession


def _wait_ready(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def _workers(pid: int) -> set[int]:
    """The spawned workers (multiprocessing also starts a resource tracker: not a worker)."""
    found = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def _infer_checked(port: int, session: OrtSession, rng, n: int) -> None:
    """n requests, each on its own connection (so the kernel spreads them over the workers)."""
    for _ in range(n):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("toy-stn", [inp]).as_numpy("logits")
        client.close()
        np.testing.assert_allclose(got, session.infer({"input": x})["logits"], rtol=1e-5, atol=1e-6)


def _grpc_infer_checked(port: int, session: OrtSession, rng, n: int) -> None:
    """n requests over gRPC, each on its own channel (its own connection)."""
    import tritonclient.grpc as grpcclient

    for _ in range(n):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("toy-stn", [inp]).as_numpy("logits")
        client.close()
        np.testing.assert_allclose(got, session.infer({"input": x})["logits"], rtol=1e-5, atol=1e-6)


def _sigterm(proc: subprocess.Popen) -> bytes:
    """Stop the server as an orchestrator would; it must exit 0. Returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    return err


def _requests_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    rows = [line for line in text.splitlines() if line.startswith("stn_requests_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in rows if 'code="200"' in line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers")
def test_workers_share_the_port_sum_their_metrics_and_stop_on_sigterm(
    toy_onnx, tmp_path, rng, free_port
):
    port = free_port
    grpc_port = port + 1 if port < 65535 else port - 1
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stn_deploy.cli", "serve", str(toy_onnx), "--port", str(port),
         "--grpc-port", str(grpc_port), "--backend", "ort", "--workers", "2", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        _wait_ready(proc, port)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        with OrtSession(toy_onnx, threads=1) as session:
            _infer_checked(port, session, rng, 16)
            _grpc_infer_checked(grpc_port, session, rng, 8)  # every worker serves gRPC too
        # Every scrape, whichever worker answers it, counts all 24 requests of both protocols
        assert [_requests_total(port) for _ in range(4)] == [24.0] * 4
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'stn_queue_samples{model="toy-stn"} 0.0' in page  # live workers' queues, summed
        assert b'stn_batch_size_count{model="toy-stn"} 24.0' in page  # one call per request
        for _ in range(4):  # Triton's statistics extension reads the same summed values
            url = f"http://127.0.0.1:{port}/v2/models/toy-stn/stats"
            (stats,) = json.loads(urllib.request.urlopen(url, timeout=5).read())["model_stats"]
            assert stats["inference_stats"]["success"]["count"] == 24
            assert (stats["execution_count"], stats["inference_count"]) == (24, 48)
        served_by = {int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("counter_*.db")}
        assert served_by and served_by <= workers
        err = _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(not Path(f"/proc/{w}").exists() for w in workers)
    assert b'"msg": "stopped"' in err and err.count(b'"msg": "worker started"') == 2


_SUPERVISOR = textwrap.dedent(
    """
    import functools, sys
    from stn_deploy.runtime.serving.config import ServerConfig
    from stn_deploy.runtime.serving.workers import serve_workers
    from stn_deploy.model_source import open_served

    opener = functools.partial(open_served, sys.argv[1], "ort", 1, None)
    if sys.argv[3] == "broken":
        opener = functools.partial(open_served, sys.argv[1] + ".missing", "ort", 1, None)
    serve_workers(opener, ServerConfig(port=int(sys.argv[2])), 2, start_grace_s=1.0)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers")
def test_a_dead_worker_is_replaced_and_a_failed_start_stops_the_server(toy_onnx, rng, free_port):
    port = free_port
    cmd = [sys.executable, "-c", _SUPERVISOR, str(toy_onnx), str(port)]
    proc = subprocess.Popen([*cmd, "ok"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_ready(proc, port)
        time.sleep(1.5)  # past the start grace: a death now is a crash, not a failed start
        before = _workers(proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in _workers(proc.pid) or len(_workers(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        _wait_ready(proc, port)
        with OrtSession(toy_onnx, threads=1) as session:
            _infer_checked(port, session, rng, 8)
        err = _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"worker died; restarting it" in err

    broken = subprocess.run([*cmd, "broken"], capture_output=True, timeout=120)
    assert broken.returncode != 0
    assert b"exited with code 1 while starting" in broken.stderr
    assert b"does not exist" in broken.stderr  # the worker's own error, above the summary


@pytest.mark.parametrize(
    ("cores", "workers", "threads"), [(2, 1, 1), (2, 2, 1), (16, 1, 15), (16, 4, 3)]
)
def test_default_threads_leave_each_worker_a_core_for_its_event_loop(
    monkeypatch, cores, workers, threads
):
    from stn_deploy.model_source import default_ort_threads

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_ort_threads(workers) == threads
