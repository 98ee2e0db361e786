"""The Session base checks names, shapes and dtypes the same way for every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stn_deploy.runtime import InputError, OrtSession, SessionError, TensorSpec, TorchSession


class _Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2, x.sum(dim=(1, 2, 3))


def _torch_session():
    spec = TensorSpec("input", (None, 1, 4, 4), "float32")
    return TorchSession(_Doubler(), [spec], ["twice", "total"])


def test_torch_session_names_outputs(rng):
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    with _torch_session() as sess:
        out = sess.infer({"input": x})
    np.testing.assert_allclose(out["twice"], 2 * x)
    np.testing.assert_allclose(out["total"], x.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_torch_session_reports_its_output_shapes():
    """Probed with one sample at open: metadata and /config show real shapes, not [-1]."""
    with _torch_session() as sess:
        specs = {s.name: (s.shape, s.dtype) for s in sess.outputs}
    assert specs == {"twice": ((None, 1, 4, 4), "float32"), "total": ((None,), "float32")}
    dynamic = TensorSpec("input", (None, 1, None, None), "float32")
    with TorchSession(_Doubler(), [dynamic], ["twice", "total"]) as sess:
        assert [s.shape for s in sess.outputs] == [(None,), (None,)]  # cannot probe: unknown


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"image": np.zeros((1, 1, 4, 4), np.float32)}, "unknown \\['image'\\]"),
        ({"input": np.zeros((1, 1, 4, 5), np.float32)}, "shape \\[1, 1, 4, 5\\], expected input"),
        ({"input": np.zeros((1, 1, 4, 4), np.float64)}, "dtype float64, expected float32"),
        ({"input": np.zeros((1, 4, 4), np.float32)}, "shape \\[1, 4, 4\\]"),
        ({"input": np.zeros((0, 1, 4, 4), np.float32)}, "batch size 0"),
        ({"input": [[1.0]]}, "must be a numpy array"),
    ],
)
def test_bad_feeds_name_expected_and_got(feeds, message):
    with _torch_session() as sess, pytest.raises(InputError, match=message):
        sess.infer(feeds)


def test_ort_session_runs_a_model_and_reports_specs(tmp_path, rng):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mul", ["input", "two"], ["out"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
    )
    path = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, path)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    with OrtSession(path, threads=1) as sess:
        assert sess.inputs == (TensorSpec("input", (None, 3), "float32"),)
        np.testing.assert_allclose(sess.infer({"input": x})["out"], 2 * x)


def test_ort_session_missing_file_says_how_to_export(tmp_path):
    with pytest.raises(SessionError, match="stn-deploy export"):
        OrtSession(tmp_path / "nope.onnx").open()


def test_ort_session_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(SessionError, match="stn-deploy check"):
        OrtSession(bad).open()
