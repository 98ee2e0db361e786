"""Which ONNX flavour `serve` and `demo` run on ONNX Runtime: the faster one, measured here."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from stn_deploy.model_source import ServeError, choose_flavour, resolve_model
from stn_deploy.serve import _flavour


def test_choose_flavour_times_both_and_serves_the_plugin_one_the_same(tmp_path, monkeypatch,
                                                                       rng):
    monkeypatch.setenv("STN_DEPLOY_CACHE", str(tmp_path))
    flavour, timings = choose_flavour("tutorial-R", threads=1, batch=16, min_time=0.1)
    assert sorted(timings) == [1, 16]
    for by_flavour in timings.values():
        assert sorted(by_flavour) == ["plugin", "standard"]
        assert all(isinstance(v, float) and v > 0 for v in by_flavour.values())
    faster = min(timings[16], key=timings[16].get)
    assert flavour == faster
    assert len(list(tmp_path.glob("onnx/tutorial-R-*-plugin.onnx"))) == 1
    x = rng.random((5, 1, 28, 28), dtype=np.float32)
    outs = {}
    for f in ("standard", "plugin"):
        _, session, _ = resolve_model("tutorial-R", "ort", threads=1, flavour=f)
        assert (session._staged is not None) == (f == "plugin")
        outs[f] = session.infer({"input": x})
        session.close()
    for key in ("logits", "theta", "warped"):
        np.testing.assert_allclose(outs["plugin"][key], outs["standard"][key], atol=1e-4)


def test_serve_flavour_option(toy_onnx, monkeypatch):
    args = SimpleNamespace(flavour="auto", model=str(toy_onnx), backend="auto")
    assert _flavour(args, 1) == "standard"  # an .onnx file is served as it is, nothing timed
    args = SimpleNamespace(flavour="plugin", model="tutorial-R", backend="auto")
    assert _flavour(args, 1) == "plugin"
    calls = []
    monkeypatch.setattr("stn_deploy.serve.choose_flavour",
                        lambda *a: calls.append(a) or ("plugin", {}))
    args = SimpleNamespace(flavour="auto", model="tutorial-R", backend="ort", max_batch=32)
    assert _flavour(args, 2) == "plugin" and calls == [("tutorial-R", 2, 32)]
    with pytest.raises(ServeError, match="--flavour must be one of"):
        resolve_model("tutorial-R", "ort", flavour="fastest")


def test_serve_parser_defaults_to_auto():
    from stn_deploy.serve import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["serve", "tutorial-R"]).flavour == "auto"
    assert parser.parse_args(["serve", "m.onnx", "--flavour", "standard"]).flavour == "standard"


def test_demo_serves_the_flavour_the_bench_step_found_faster():
    from stn_deploy.demo import BENCH_BATCHES, DemoState, served_flavour
    from stn_deploy.runtime.bench import BenchRow, LatencyStats

    def row(backend, batch, ms):
        return BenchRow(backend, batch, LatencyStats(ms, ms, ms, ms, batch / ms, 10))

    big = max(BENCH_BATCHES)
    state = DemoState(checkpoint="tutorial-R", out=None)
    state.exports = {"standard": object(), "plugin": object()}
    state.bench_rows = [row("ort", 1, 0.1), row("ort-plugin", 1, 0.12),
                        row("ort", big, 3.0), row("ort-plugin", big, 2.0)]
    assert served_flavour(state)[0] == "plugin"
    state.bench_rows[-1] = row("ort-plugin", big, 3.5)
    flavour, why = served_flavour(state)
    assert flavour == "standard" and "3.500" in why
    del state.exports["plugin"]
    assert served_flavour(state) == ("standard", "the plugin flavour was not measured")
