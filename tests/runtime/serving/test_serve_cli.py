"""The serve CLI glue: MODEL -> session and name, backend choice, the demo's round trip."""

from __future__ import annotations

import pytest

from stn_deploy.model_source import ServeError, pick_backend, resolve_model
from stn_deploy.serve import demo_serve


def test_demo_serve_round_trip_matches_local_session(toy_onnx, capsys):
    result = demo_serve(toy_onnx, n_requests=5, backend="ort")
    assert result["model"] == "toy-stn"
    assert result["matches"] is True
    assert len(result["answers"]) == 5 and all(0 <= a < 10 for a in result["answers"])
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    out = capsys.readouterr().out
    assert "served toy-stn (ort)" in out and "p50" in out


def test_resolve_onnx_names_model_by_stem(toy_onnx):
    name, session, backend = resolve_model(toy_onnx, "ort", threads=1)
    try:
        assert (name, backend) == ("toy-stn", "ort")
        assert session.output_names == ["logits", "theta", "warped"]
    finally:
        session.close()


def test_backend_choice(tmp_path):
    assert pick_backend(tmp_path / "m.engine") == "trt"
    assert pick_backend(tmp_path / "m.onnx", "torch") == "torch"


@pytest.mark.parametrize(
    ("model", "backend", "message"),
    [
        ("m.engine", "ort", "serve it with --backend trt"),
        ("m.onnx", "trt", "build one first"),
        ("m.onnx", "torch", "needs a checkpoint directory"),
        ("missing.onnx", "ort", "does not exist"),
    ],
)
def test_resolve_errors_say_what_to_do(tmp_path, model, backend, message):
    with pytest.raises(ServeError, match=message):
        resolve_model(tmp_path / model, backend)


def test_demo_serve_with_given_images_reports_accuracy(toy_onnx, rng):
    import numpy as np

    from stn_deploy.runtime.ort import OrtSession

    images = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    with OrtSession(toy_onnx) as sess:
        truth = sess.infer({"input": images})["logits"].argmax(axis=1)
    labels = truth.copy()
    labels[0] = (labels[0] + 1) % 10  # one wrong label: 3 of 4 right
    result = demo_serve(toy_onnx, n_requests=10, backend="ort", echo=False,
                        images=images, labels=labels)  # fmt: skip
    assert result["answers"] == truth.tolist()
    assert result["accuracy"] == 0.75


def test_checkpoint_serves_the_same_outputs_on_torch_and_ort(tmp_path, monkeypatch, rng):
    import numpy as np

    from stn_deploy.models import shipped_checkpoints

    if "tutorial-R" not in shipped_checkpoints():
        pytest.fail("models/checkpoints/tutorial-R is missing: the package ships it")
    monkeypatch.setenv("STN_DEPLOY_CACHE", str(tmp_path))  # a fresh export into the cache
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    outs = {}
    for backend in ("ort", "torch"):
        name, session, used = resolve_model("tutorial-R", backend, threads=1)
        assert (name, used) == ("tutorial-R", backend)
        shapes = {s.name: s.shape[1:] for s in session.outputs}
        assert shapes == {"logits": (10,), "theta": (2, 3), "warped": (1, 28, 28)}, backend
        outs[backend] = session.infer({"input": x})
        session.close()
    assert sorted(outs["ort"]) == ["logits", "theta", "warped"]
    assert len(list(tmp_path.glob("onnx/tutorial-R-*.onnx"))) == 1
    for key in ("logits", "theta", "warped"):
        np.testing.assert_allclose(outs["ort"][key], outs["torch"][key], rtol=1e-4, atol=1e-4)


_TIMEOUTS = "--request-timeout-s, --body-timeout-s and --header-timeout-s must be > 0"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--body-timeout-s", "0"], _TIMEOUTS),
        (["--request-timeout-s", "-1"], _TIMEOUTS),
        (["--header-timeout-s", "0"], _TIMEOUTS),
        (["--max-batch", "0"], "--max-batch must be an int >= 1, got 0; e.g. 64"),
        (
            ["--max-request-batch", "300", "--max-queue", "256"],
            "--max-request-batch (300) must be 1..--max-queue (256); "
            "e.g. --max-request-batch=256 with --max-queue=1024",
        ),
    ],
)
def test_serve_refuses_bad_limits_in_the_words_of_its_flags(toy_onnx, args, message, capsys):
    from stn_deploy.cli import main

    assert main(["serve", str(toy_onnx), "--backend", "ort", *args]) == 2
    assert f"error: {message}" in capsys.readouterr().err
