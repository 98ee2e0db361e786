"""export_module's contract: names, dynamic batch, extra outputs, fp16 I/O, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stn_deploy.export.errors import ExportError
from stn_deploy.export.onnx_export import export_module
from stn_deploy.export.tolerances import FP32
from stn_deploy.export.verify import random_inputs

from .stn_fixtures import DirectSTN, TinySTN


@pytest.fixture(scope="module")
def direct_export(tmp_path_factory):
    model = DirectSTN().eval()
    path = tmp_path_factory.mktemp("direct") / "m.onnx"
    result = export_module(model, (1, 1, 16, 16), path, extra_outputs=("theta", "warped"))
    return model, result


def test_result_names_ir_version_and_hash(direct_export):
    _, result = direct_export
    assert result.input_names == ("input",)
    assert result.output_names == ("logits", "theta", "warped")
    proto = onnx.load(str(result.path))
    assert proto.ir_version == 10
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 18)]
    import hashlib

    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert result.contract and "contract OK" in result.summary()


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_batch1_export_runs_at_any_batch(direct_export, batch, rng):
    model, result = direct_export
    x = rng.random((batch, 1, 16, 16), dtype=np.float32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits, theta, warped = sess.run(None, {"input": x})
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref_theta = model.loc(t).view(-1, 2, 3)
        ref = model(t)
    assert logits.shape == (batch, 10) and theta.shape == (batch, 2, 3)
    assert warped.shape == (batch, 1, 16, 16)
    np.testing.assert_allclose(logits, ref.numpy(), atol=FP32.atol, rtol=0)
    np.testing.assert_allclose(theta, ref_theta.numpy(), atol=1e-6, rtol=0)


def test_warp_module_extra_outputs_are_the_warps_own(tmp_path, rng):
    model = TinySTN("projective").eval()
    result = export_module(model, (1, 16, 16), tmp_path / "p.onnx", extra_outputs=("warped",
                                                                                    "theta"))
    assert result.output_names == ("logits", "warped", "theta")
    x = rng.random((2, 1, 16, 16), dtype=np.float32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    _, warped, theta = sess.run(None, {"input": x})
    with torch.no_grad():
        ref_warped, ref_theta = model.warp(torch.from_numpy(x), model.loc(torch.from_numpy(x)))
    assert theta.shape == (2, 3, 3)
    np.testing.assert_allclose(theta, ref_theta.numpy(), atol=1e-6)
    np.testing.assert_allclose(warped, ref_warped.numpy(), atol=1e-5)


def test_fp16_export_has_fp16_io(tmp_path, rng):
    model = TinySTN("tps").eval()
    result = export_module(model, (1, 16, 16), tmp_path / "h.onnx", precision="fp16")
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float16)"
    x = rng.random((4, 1, 16, 16), dtype=np.float32)
    (logits,) = sess.run(None, {"input": x.astype(np.float16)})
    assert logits.dtype == np.float16
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(logits.astype(np.float32) - ref).max() < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"flavour": "fancy"}, "flavour"),
        ({"precision": "int8"}, "precision"),
        ({"extra_outputs": ("grid",)}, "extra output"),
    ],
)
def test_bad_options_are_export_errors(tmp_path, kwargs, match):
    with pytest.raises(ExportError, match=match):
        export_module(DirectSTN(), (1, 16, 16), tmp_path / "x.onnx", **kwargs)


def test_extra_outputs_need_a_sampler(tmp_path):
    with pytest.raises(ExportError, match="grid_sample"):
        export_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)), (1, 4, 4),
                      tmp_path / "x.onnx", extra_outputs=("warped",))


def _plugin_parts_missing() -> str | None:
    import importlib.util

    for name in ("stn_deploy.export.plugin_flavour", "stn_deploy.plugins.ort_ops"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not in this build"
    return None


@pytest.mark.parametrize("kind", ["affine", "projective", "tps"])
def test_plugin_flavour_exports_checks_and_verifies(kind, tmp_path):
    missing = _plugin_parts_missing()
    if missing:
        pytest.skip(f"plugin flavour: {missing}")
    from stn_deploy.export.verify import random_inputs, verify

    model = TinySTN(kind).eval()
    result = export_module(model, (1, 16, 16), tmp_path / "p.onnx", flavour="plugin")
    assert result.contract, result.contract.format()
    proto = onnx.load(str(result.path))
    assert any(n.domain == "stn" for n in proto.graph.node)
    assert not any(n.op_type == "GridSample" for n in proto.graph.node)
    outcome = verify(model, result.path, random_inputs((1, 16, 16), 16))
    assert outcome, outcome.summary()


def test_cli_fp16_export_verifies_with_fp16_tolerance(tmp_path, monkeypatch, capsys):
    import json

    from safetensors.torch import save_file

    from stn_deploy.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    # A random head puts some inputs' two best logits within fp16 noise (measured: min gap
    # ~5e-4 over 64 inputs, fp16 error up to 7e-4), and the fp16 top-1 gate then fails on a
    # near-tie, not on an export error. Seeded weights and inputs with clear margins instead:
    torch.manual_seed(162)
    model = TinySTN("affine").eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(random_inputs((1, 16, 16), 32, seed=0))).numpy()
    top2 = np.sort(ref, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 0.1  # no near-ties among these inputs
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    common = ["--module", "stn_fixtures:TinySTN", "--weights", "w.safetensors",
              "--input-shape", "1,16,16"]
    assert main(["export", *common, "--precision", "fp16", "--out", "h.onnx"]) == 0
    assert main(["verify", *common, "h.onnx", "--samples", "32", "--seed", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["precision"] == "fp16" and record["tolerance"]["name"] == "fp16"
    assert record["top1_agreement"] >= 0.99 and 0 < record["max_abs_err"] < 0.05
