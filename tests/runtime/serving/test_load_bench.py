"""The load benchmark's client checks every answer: it counts a wrong one, and none when right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from stn_deploy import load_client
from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread

_PATH = Path(__file__).resolve().parents[3] / "bench" / "load_bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("load_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_bench", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_client_checks_each_response_against_its_request(toy_onnx):
    requests, expected = load_client.build_requests(toy_onnx, "toy-stn", "127.0.0.1", 16, samples=2)
    wrong = [e + 1.0 for e in expected]  # every answer off by one
    with (
        OrtSession(toy_onnx, threads=1) as sess,
        ServerThread(ServedModel("toy-stn", sess), ServerConfig(port=0, max_batch=8)) as srv,
    ):
        host, port = srv.url.split(":")
        good = load_client.run(
            load_client.run_level(host, int(port), requests, expected, 4, 40, 10.0, samples=2)
        )
        bad = load_client.run(
            load_client.run_level(host, int(port), requests, wrong, 2, 10, 10.0, samples=2)
        )
    assert (good.requests, good.errors, good.mismatches) == (40, 0, 0)
    assert good.throughput > 0 and good.p50_ms <= good.p99_ms
    assert (bad.requests, bad.errors, bad.mismatches) == (10, 0, 10)
    assert np.asarray(expected).shape == (16, 2, 10)


def test_client_checks_json_and_grpc_answers_too(toy_onnx):
    from stn_deploy import load_client_grpc

    json_requests, expected = load_client.build_requests(
        toy_onnx, "toy-stn", "127.0.0.1", 12, protocol="json"
    )
    assert b'"data":[' in json_requests[0] and b"binary_data_size" not in json_requests[0]
    grpc_requests, grpc_expected = load_client_grpc.build_grpc_requests(toy_onnx, "toy-stn", 12)
    np.testing.assert_array_equal(np.asarray(grpc_expected), np.asarray(expected))  # same seed
    wrong = [e + 1.0 for e in expected]
    config = ServerConfig(port=0, grpc_port=0, max_batch=8)
    with (
        OrtSession(toy_onnx, threads=1) as sess,
        ServerThread(ServedModel("toy-stn", sess), config) as srv,
    ):
        host, port = srv.url.split(":")
        grpc_port = int(srv.grpc_url.rsplit(":", 1)[1])
        results = [
            load_client.run(load_client.run_level(host, int(port), json_requests, answers, 4,
                                                  24, 10.0))  # fmt: skip
            for answers in (expected, wrong)
        ] + [
            load_client.run(load_client_grpc.run_grpc_level(host, grpc_port, grpc_requests,
                                                            answers, 4, 24, 10.0, channels=2))
            for answers in (expected, wrong)
        ]  # fmt: skip
    assert [(r.requests, r.errors, r.mismatches) for r in results] == [
        (24, 0, 0), (24, 0, 24), (24, 0, 0), (24, 0, 24)
    ]  # fmt: skip


def test_answer_checks_read_every_form_the_servers_send():
    from tritonclient.grpc import service_pb2

    from stn_deploy.load_client_grpc import check_grpc_answer

    logits = np.arange(20, dtype=np.float32).reshape(2, 10) / 7
    as_json = json.dumps({"outputs": [{"name": "theta", "shape": [2, 6], "data": [0] * 12},
                                      {"name": "logits", "shape": [2, 10],
                                       "data": logits.ravel().tolist()}]}).encode()  # fmt: skip
    assert load_client.check_answer(as_json, None, logits)
    assert not load_client.check_answer(as_json, None, logits[:1])  # shape differs
    assert not load_client.check_answer(b"not json", None, logits)
    out = service_pb2.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32",
                                                           shape=[2, 10])  # fmt: skip
    raw = service_pb2.ModelInferResponse(outputs=[out], raw_output_contents=[logits.tobytes()])
    assert check_grpc_answer(raw.SerializeToString(), logits)  # Triton, stn-deploy
    typed = service_pb2.ModelInferResponse(outputs=[out])
    typed.outputs[0].contents.fp32_contents.extend(logits.ravel().tolist())
    assert check_grpc_answer(typed.SerializeToString(), logits)  # MLServer
    assert not check_grpc_answer(typed.SerializeToString(), logits + 1)
    assert not check_grpc_answer(b"\xff\xff", logits)


def test_serve_bench_command_against_a_running_server(toy_onnx, tmp_path, capsys):
    import json

    from stn_deploy.cli import main

    out = tmp_path / "r.json"
    with (
        OrtSession(toy_onnx, threads=1) as sess,
        ServerThread(ServedModel("toy-stn", sess), ServerConfig(port=0)) as srv,
    ):
        rc = main(["serve-bench", str(toy_onnx), "--server", srv.url, "--name", "toy-stn",
                   "--levels", "1,4", "--max-requests", "30", "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    levels = report["server"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert all(lv["requests"] == 30 and lv["errors"] == lv["mismatches"] == 0 for lv in levels)
    assert "errors and mismatches: 0" in capsys.readouterr().out


def test_serve_bench_takes_the_readme_form_with_a_separator(toy_onnx, tmp_path):
    """`stn-deploy serve-bench -- --out X` (README, Makefile): the `--` is not passed on."""
    import json

    from stn_deploy.cli import main

    out = tmp_path / "r.json"
    with (
        OrtSession(toy_onnx, threads=1) as sess,
        ServerThread(ServedModel("toy-stn", sess), ServerConfig(port=0)) as srv,
    ):
        rc = main(["serve-bench", "--", "--levels", "2", "--max-requests", "10",
                   "--server", srv.url, "--name", "toy-stn", "--out", str(out),
                   str(toy_onnx)])  # fmt: skip
    assert rc == 0
    levels = json.loads(out.read_text())["server"]["levels"]
    assert [(lv["concurrency"], lv["requests"], lv["errors"]) for lv in levels] == [(2, 10, 0)]


def test_raw_only_measures_the_ceiling_for_a_two_machine_run(toy_onnx, tmp_path, capsys):
    import json

    from stn_deploy.cli import main

    out = tmp_path / "raw.json"
    rc = main(["serve-bench", str(toy_onnx), "--raw-only", "--raw-seconds", "0.02",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    raw = json.loads(out.read_text())["raw_session"]
    combos = {(r["threads"], r["spinning"], r["batch"]) for r in raw["runs"]}
    assert len(combos) == 16 and all(r["throughput"] > 0 for r in raw["runs"])
    assert raw["best_throughput"] == max(r["throughput"] for r in raw["runs"])
    assert "raw ONNX Runtime session, best:" in capsys.readouterr().out


def test_server_cpu_is_split_between_main_thread_and_other_threads():
    """A thread that burns CPU shows up under "threads", not "main"; the parts add up."""
    import os
    import threading
    import time

    pid = os.getpid()
    before = load_client.process_cpu_split(pid)

    def burn() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()  # gone before the second read: its CPU must still be counted
    after = load_client.process_cpu_split(pid)
    grew = {k: after[k] - before[k] for k in after}
    assert set(grew) == {"main", "threads"}
    assert grew["threads"] >= 0.25  # ticks are 10 ms: 0.3 s of burning reads at least 0.25
    assert grew["main"] < 0.2  # the main thread only waited
    total = load_client.process_cpu_s(pid)
    assert abs(total - (after["main"] + after["threads"])) < 0.05
    assert load_client.process_cpu_split(None) is None
    assert load_client.process_cpu_split(2**22 + 12345) is None  # no such process


def test_local_run_reports_targets_and_where_the_server_cpu_went(toy_onnx, tmp_path):
    """The default mode: servers as subprocesses, interleaved rounds, the issue's targets."""
    import json

    from stn_deploy.cli import main

    out = tmp_path / "local.json"
    rc = main(["serve-bench", "--", str(toy_onnx), "--levels", "2", "--max-requests", "200",
               "--max-seconds", "1", "--rounds", "2", "--raw-seconds", "0.02",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    for kind in ("batched", "per_request"):
        (level,) = report[kind]["levels"]
        assert (level["requests"], level["errors"], level["mismatches"]) == (200, 0, 0)
        split = level["server_cpu_ms_per_request_by_thread"]  # 10 ms ticks: no sign to check
        assert abs(split["main"] + split["threads"] - level["server_cpu_ms_per_request"]) < 1e-3
    rounds = report["rounds"]
    assert all(len(rounds["runs"][k]) == 2 for k in ("raw_session", "batched", "per_request"))
    by_thread = rounds["median_server_cpu_us_per_sample_by_thread"]
    assert set(by_thread) == {"batched", "per_request", "http_floor"}
    assert by_thread["batched"]["main"] > 0
    targets = report["targets"]
    median = rounds["median_throughput"]
    assert targets["vs_raw_session"] == round(median["batched"] / median["raw_session"], 3)
    assert targets["vs_per_request"] == round(median["batched"] / median["per_request"], 2)
    assert targets["errors_and_mismatches"] == 0
    assert targets["met"] == (
        median["batched"] >= 0.5 * median["raw_session"]
        and median["batched"] >= 3 * median["per_request"]
    )
