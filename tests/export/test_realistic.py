"""Realistic STNs nobody on the team wrote the graphs of, through every export variant, as users
run them: ``stn-deploy export``, ``check`` and ``verify`` from the CLI with ``--module``.

Each module of ``tests/realistic_stns.py`` (OCR and ASTER TPS rectifiers with and without their
recogniser, a flow-field registration warp in bilinear and nearest, kornia affine and
perspective STNs, two STs in sequence) goes through standard, plugin, fp16 and plugin+fp16; the
files must pass the contract, run at batch 1 and 7, and pass verify under the float64 policy.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from stn_deploy.cli import main
from stn_deploy.plugins import names

from .conftest import CASES, VARIANTS, cli_source


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "precision"), VARIANTS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_check_verify_from_the_cli(name, flavour, precision, exported, capsys):
    case = CASES[name]
    path, export_out = exported(name, flavour, precision, capsys)
    assert "contract OK" in export_out
    assert main(["check", str(path)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    code = main(["verify", *cli_source(case, exported.weights(name)), str(path), "--samples", "16",
                 "--json"])
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0 and record["passed"], captured.err
    assert record["reference"] == "float64" and record["precision"] == precision
    (check,) = record["checks"]
    assert check["kind"] == case.output
    if precision == "fp32":  # the float64 policy: within 4x PyTorch fp32's own error
        assert check["err"] <= 4 * check["err_torch"] + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "precision"), VARIANTS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamic_batch_runs_at_1_and_7(name, flavour, precision, exported, capsys):
    from stn_deploy.plugins import ort_ops
    from stn_deploy.runtime.ort import OrtSession

    path, _ = exported(name, flavour, precision, capsys)
    dtype = np.float16 if precision == "fp16" else np.float32
    x = np.random.default_rng().random((7, *CASES[name].input_shape)).astype(dtype)
    with OrtSession(str(path), session_hooks=[ort_ops.register]) as session:
        seven = session.infer({"input": x})["logits"]
        one = session.infer({"input": x[3:4]})["logits"]
    assert seven.shape[0] == 7 and one.shape[0] == 1 and seven.dtype == dtype
    assert np.abs(one[0].astype(np.float64) - seven[3]).max() <= (2e-3 if dtype == np.float16
                                                                 else 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_plugin_flavour_fuses_affine_and_projective_warps(name, precision, exported, capsys):
    path, export_out = exported(name, "plugin", precision, capsys)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node if n.domain == names.ONNX_DOMAIN]
    fused = sum(op != names.GRID_SAMPLE_OP for op in ops)
    assert fused == CASES[name].fusable, ops
    assert not any(n.op_type == "GridSample" for n in model.graph.node)
    assert f"fused {fused} of {len(ops)} warp(s)" in export_out
    if fused < len(ops):
        assert "not fused:" in export_out and "neither affine nor projective" in export_out \
            or "no per-sample" in export_out
