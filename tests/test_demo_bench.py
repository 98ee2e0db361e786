"""The demo and bench subcommands end to end on a small checkpoint (random tutorial weights)."""

from __future__ import annotations

import json
import re

import pytest

from stn_deploy.cli import main
from stn_deploy.demo import DemoState, Skipped, run_demo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from stn_deploy.models import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tutorial-test"
    config = {"arch": "tutorial", "kwargs": {}, "dataset": "mnist5k", "distortion": "R"}
    save_checkpoint(build_model("tutorial"), path, config)
    return path


@pytest.mark.slow
def test_demo_runs_every_step_and_ends_with_the_summary(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--bench-time", "0.05"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0, "\n".join(lines)
    last = lines[-1]
    match = re.fullmatch(
        r"demo OK: tutorial-test accuracy torch (\S+)%, onnxruntime (\S+)%, "
        r"top-1 agreement 100\.00%, max abs err (\S+) \(n=1000\)", last)
    assert match, last
    assert match.group(1) == match.group(2) and float(match.group(3)) < 1e-4
    assert any(re.match(r"\[\d/\d\] tensorrt: skipped: TensorRT: ", line) for line in lines)
    assert (out / "model.onnx").is_file()
    assert (out / "rectification.png").read_bytes()[:4] == b"\x89PNG"
    assert any("ort-default" in line for line in lines)


def test_skipped_steps_are_said_and_an_unverified_demo_fails(tmp_path):
    def nothing_here(state):
        raise Skipped("no reason to run")

    echoed: list[str] = []
    code = run_demo(DemoState("x", tmp_path), steps=[("only", nothing_here)], echo=echoed.append)
    assert code == 1
    assert echoed[0] == "[1/1] only: skipped: no reason to run"
    assert echoed[-1] == "demo incomplete: x was not verified"


def test_bench_cli_writes_table_json_and_plot(checkpoint, tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    code = main(["bench", str(checkpoint), "--backends", "torch,ort", "--batch-sizes", "1,4",
                 "--min-time", "0.05", "--out", str(out), "--plot", str(png)])
    printed = capsys.readouterr().out
    assert code == 0
    record = json.loads(out.read_text())
    measured = {(r["backend"], r["batch"]) for r in record["rows"] if r["p50_ms"] > 0}
    assert measured == {("torch", 1), ("torch", 4), ("ort", 1), ("ort", 4)}
    assert record["environment"]["versions"]["torch"].startswith("2.")
    by_target = {(t["backend"], t["baseline"], t["batch"]): t for t in record["targets"]}
    assert by_target[("ort", "torch", 1)]["speedup"] > 0
    assert by_target[("ort", "ort-default", 64)]["met"] is None  # not measured in this run
    assert "target ort vs torch at batch 1" in printed
    assert png.read_bytes()[:4] == b"\x89PNG"
