"""bench/peers/ without installing any peer: its report (medians, targets, plot), the MLServer
files it writes, and the LitServe app's JSON codec, whose answers our client must accept."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from stn_deploy.load_client import check_answer

PEERS = Path(__file__).resolve().parents[3] / "bench" / "peers"


@pytest.fixture(scope="module")
def peers():
    names = ("report", "servers", "kserve_json", "run")
    sys.path.insert(0, str(PEERS))
    try:
        modules = {n: importlib.import_module(n) for n in names}
    finally:  # the scripts' own folder and short names must not leak into other tests
        sys.path[:] = [p for p in sys.path if p != str(PEERS)]
        for n in names:
            sys.modules.pop(n, None)
    return modules


def _cell(server, protocol, c, rnd, rate, p50=0.5, errors=0, mismatches=0):
    return {"server": server, "protocol": protocol, "concurrency": c, "round": rnd,
            "throughput": rate, "p50_ms": p50, "p99_ms": 2 * p50, "requests": 100,
            "errors": errors, "mismatches": mismatches, "server_cpu_ms_per_request": 0.3,
            "client_cpu_ms_per_request": 0.1}  # fmt: skip


def _cells(ours_grpc=(900, 1000, 1100), errors=0):
    cells = []
    for r in range(3):
        cells += [
            _cell("ours", "json", 64, r, 2400 + 100 * r), _cell("ours", "binary", 64, r, 6000),
            _cell("ours", "grpc", 64, r, ours_grpc[r]), _cell("ours", "json", 1, r, 1800, 0.55),
            _cell("ours", "binary", 1, r, 2000, 0.45), _cell("ours", "grpc", 1, r, 900, 1.2),
            _cell("mlserver", "json", 64, r, 1000), _cell("mlserver", "grpc", 64, r, 500),
            _cell("mlserver", "json", 1, r, 200, 4.0, errors=errors),
        ]  # fmt: skip
    return cells


def test_summary_takes_medians_over_rounds_and_keeps_every_error(peers):
    summary = peers["report"].summarize(_cells(errors=1))
    row = summary["ours/json/c64"]
    assert (row["throughput"], row["throughput_min"], row["throughput_max"]) == (2500, 2400, 2600)
    assert row["rounds"] == 3 and row["requests"] == 300
    assert summary["mlserver/json/c1"]["errors"] == 3


def test_targets_are_ratios_of_medians_met_or_missed(peers):
    report = peers["report"]
    cells = _cells()
    targets = report.targets(cells, report.summarize(cells))
    ratios = {r["target"]: r for r in targets["ratios"]}
    json_ratio = ratios["ours JSON >= 2x MLServer JSON"]
    assert (json_ratio["measured"], json_ratio["met"]) == (2.5, True)
    assert json_ratio["per_round"] == [2.4, 2.5, 2.6]
    assert ratios["ours gRPC >= 2x MLServer gRPC"]["measured"] == 2.0  # exactly at the target
    assert ratios["ours gRPC >= 2x MLServer gRPC"]["met"] is True
    assert (ratios["ours binary >= 5x MLServer JSON"]["measured"],
            ratios["ours binary >= 5x MLServer JSON"]["met"]) == (6.0, True)  # fmt: skip
    p50 = {r["protocol"]: r["met"] for r in targets["p50_at_c1"]}
    assert p50 == {"json": True, "binary": True, "grpc": False}  # 1.2 ms > 1 ms
    assert targets["zero_errors_and_mismatches"] and not targets["all_met"]
    slow = _cells(ours_grpc=(900, 950, 999))
    missed = report.targets(slow, report.summarize(slow))
    assert [r["met"] for r in missed["ratios"]] == [True, False, True]  # 950 / 500 = 1.9
    bad = _cells(errors=2)
    flagged = report.targets(bad, report.summarize(bad))
    assert flagged["errors_and_mismatches"] == {"mlserver/json/c1": 6}
    assert not flagged["zero_errors_and_mismatches"]


def test_a_target_whose_peer_did_not_run_is_missed_not_skipped(peers):
    report = peers["report"]
    cells = [c for c in _cells() if not (c["server"] == "mlserver" and c["protocol"] == "grpc")]
    ratios = report.targets(cells, report.summarize(cells))["ratios"]
    grpc = next(r for r in ratios if "gRPC" in r["target"])
    assert grpc["measured"] is None and grpc["met"] is False


def test_plot_writes_a_png(peers, tmp_path):
    out = tmp_path / "peers.png"
    peers["report"].plot(peers["report"].summarize(_cells()), out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlserver_gets_its_documented_batching_settings(peers, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    written = peers["servers"].mlserver_files(tmp_path / "ml", onnx, "tutorial-R",
                                             (8080, 8081, 8082), 64, 2.0)  # fmt: skip
    model = json.loads((tmp_path / "ml" / "tutorial-R" / "model-settings.json").read_text())
    assert model == written["model-settings.json"]
    assert (model["max_batch_size"], model["max_batch_time"]) == (64, 0.002)
    assert model["implementation"] == "mlserver_runtime.OnnxModel"
    assert model["parameters"]["uri"] == str(onnx)
    settings = json.loads((tmp_path / "ml" / "settings.json").read_text())
    assert (settings["http_port"], settings["grpc_port"], settings["debug"]) == (8080, 8081,
                                                                                 False)
    assert (tmp_path / "ml" / "tutorial-R" / "mlserver_runtime.py").is_file()
    assert peers["servers"].PROTOCOLS["mlserver"] == ("json", "grpc")  # no binary extension


def test_litserve_app_codec_round_trips_and_our_client_accepts_its_answers(peers, rng):
    from stn_deploy.runtime.serving.protocol_client import encode_json_request

    codec = peers["kserve_json"]
    x = rng.random((1, 1, 28, 28), dtype=np.float32)
    body, _ = encode_json_request({"input": x})
    np.testing.assert_array_equal(codec.decode_request(json.loads(body)), x)
    logits = rng.standard_normal(10).astype(np.float32)  # unbatch gives each request its row
    answer = json.dumps(codec.encode_response("tutorial-R", logits)).encode()
    assert check_answer(answer, None, logits[None])
    assert not check_answer(answer, None, logits[None] + 1)
    with pytest.raises(ValueError, match="must be FP32"):
        codec.decode_request({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1],
                                          "data": [1.0]}]})  # fmt: skip


def test_the_script_parses_its_arguments_without_running_anything(peers, tmp_path):
    run = peers["run"]
    assert run.SERVERS == ("ours", "mlserver", "litserve")
    assert run.DEFAULT_CACHE.parts[-2:] == ("stn-deploy", "peers")  # a cache dir, not the repo
    with pytest.raises(SystemExit) as done:
        run.main(["--help"])
    assert done.value.code == 0
