"""Every shipped checkpoint serves and makes a Triton repository: the STNs with theta and warped,
the baselines without a transformer (cnn-*) with logits alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format

from stn_deploy.cli import main
from stn_deploy.model_source import resolve_model
from stn_deploy.models import load_model, shipped_checkpoints
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.uvicorn_runner import ServerThread

CHECKPOINTS = sorted(shipped_checkpoints())


def test_the_package_ships_baselines_and_transformers():
    kinds = {_has_transformer(name) for name in CHECKPOINTS}
    assert len(CHECKPOINTS) >= 7 and kinds == {True, False}, CHECKPOINTS


def _has_transformer(name: str) -> bool:
    """From the checkpoint's own config.json, not from the code under test."""
    config = json.loads((shipped_checkpoints()[name] / "config.json").read_text())
    return config.get("transform") is not None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("onnx-cache")
        mp.setenv("STN_DEPLOY_CACHE", str(path))  # a fresh export of every checkpoint
        yield path


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_checkpoint_serves_and_makes_a_triton_repo(name, cache, tmp_path, model_config_pb2, rng):
    expected = ["logits", "theta", "warped"] if _has_transformer(name) else ["logits"]
    # stn-deploy triton-repo NAME (exports the checkpoint into the cache)
    assert main(["triton-repo", name, "--out", str(tmp_path / "repo")]) == 0
    pbtxt = (tmp_path / "repo" / name / "config.pbtxt").read_text()
    config = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    assert [o.name for o in config.output] == expected
    assert list(config.output[0].dims) == [10]

    # stn-deploy serve NAME: the same MODEL -> session path, answered over HTTP
    served_name, session, backend = resolve_model(name, "auto", threads=1)
    assert (served_name, backend) == (name, "ort")
    assert session.output_names == expected
    assert len(list(cache.glob(f"onnx/{name}-*.onnx"))) == 1  # exported once, for both
    loaded = load_model(name)
    x = rng.random((3, *loaded.input_shape), dtype=np.float32)
    try:
        with ServerThread(ServedModel(name, session), ServerConfig(port=0)) as srv:
            client = httpclient.InferenceServerClient(srv.url)
            meta = client.get_model_metadata(name)
            assert [o["name"] for o in meta["outputs"]] == expected
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer(name, [inp])  # no outputs named: every output the model has
            client.close()
    finally:
        session.close()
    import torch

    with torch.inference_mode():
        want = loaded.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(res.as_numpy("logits"), want, rtol=1e-4, atol=1e-4)
    got = {o["name"] for o in res.get_response()["outputs"]}
    assert got == set(expected)


@pytest.mark.parametrize("name", ["cnn-R", "st-cnn-affine-R"])
def test_torch_backend_serves_the_same_outputs(name, rng):
    expected = ["logits", "theta", "warped"] if _has_transformer(name) else ["logits"]
    _, session, backend = resolve_model(name, "torch", threads=1)
    try:
        assert backend == "torch" and session.output_names == expected
        x = rng.random((2, 1, 28, 28), dtype=np.float32)
        out = session.infer({"input": x})
        assert sorted(out) == sorted(expected) and out["logits"].shape == (2, 10)
    finally:
        session.close()
