"""Plugin-flavour graphs on ONNX Runtime through the staged native route (runtime/ort_stages.py).

Hand-built graphs with the awkward wiring a split has to get right (a plugin output that is both
a graph output and an input to later nodes, a tensor skipping a stage, plugins in sequence, an
initializer read on both sides of a cut), checked against the same computation done step by step
with numpy and the CPU kernels; and the two ONNX Runtime routes (native stages, onnxruntime-
extensions' Python ops) against each other on an exported model.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from stn_deploy.plugins import cpu, names, ort_ops
from stn_deploy.runtime import OrtSession, SessionError

N, C, H, W = 3, 2, 9, 11
OUT = (6, 7)


def _attrs(out_hw=None, mode=0, padding=0, align_corners=0) -> dict:
    attrs = {names.ATTR_INTERPOLATION_MODE: mode, names.ATTR_PADDING_MODE: padding,
             names.ATTR_ALIGN_CORNERS: align_corners, "plugin_namespace": "stn",
             "plugin_version": "1"}
    if out_hw:
        attrs.update({names.ATTR_OUT_HEIGHT: out_hw[0], names.ATTR_OUT_WIDTH: out_hw[1]})
    return attrs


def _wired_model() -> bytes:
    """x -> Relu -> a; affine(a, theta) -> warped (an output, and read below);
    grid = Tanh(g); b = warped * scale; sampled = grid_sample(b, grid, border);
    y = sampled + Relu(a)[:, :, :6, :7] (a skips a stage) + scale (read in two stages)."""
    scale = numpy_helper.from_array(np.array(1.5, np.float32), "scale")
    starts = numpy_helper.from_array(np.array([0, 0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array(list(OUT), np.int64), "ends")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mul", ["a", "scale"], ["a2"]),
        helper.make_node(names.AFFINE_GRID_SAMPLE_OP, ["a2", "theta"], ["warped"], domain="stn",
                         **_attrs(OUT)),
        helper.make_node("Tanh", ["g"], ["grid"]),
        helper.make_node("Mul", ["warped", "scale"], ["b"]),
        helper.make_node(names.GRID_SAMPLE_OP, ["b", "grid"], ["sampled"], domain="stn",
                         **_attrs(padding=1)),
        helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["a_crop"]),
        helper.make_node("Add", ["sampled", "a_crop"], ["s1"]),
        helper.make_node("Add", ["s1", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "wired",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, H, W]),
         helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["n", 2, 3]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, ["n", 6, 7, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("warped", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("theta", TensorProto.FLOAT, None)],
        initializer=[scale, starts, ends, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("stn", 1)])
    return model.SerializeToString()


def _feeds(rng):
    return {"x": rng.standard_normal((N, C, H, W)).astype(np.float32),
            "theta": rng.uniform(-1, 1, (N, 2, 3)).astype(np.float32),
            "g": rng.standard_normal((N, 6, 7, 2)).astype(np.float32)}


def test_staged_graph_matches_the_computation_step_by_step(rng):
    feeds = _feeds(rng)
    a = np.maximum(feeds["x"], 0)
    warped = cpu.affine_grid_sample(a * np.float32(1.5), feeds["theta"], OUT, kernel="reference")
    grid = np.tanh(feeds["g"])
    sampled = cpu.grid_sample(warped * np.float32(1.5), grid, padding_mode="border",
                              kernel="reference")
    with OrtSession(_wired_model(), threads=2) as session:
        assert [s.name for s in session.inputs] == ["x", "theta", "g"]
        assert session.output_names == ["y", "warped", "theta"]
        out = session.infer(feeds)
        stages = session._staged.stages
    # x -> [stage 0] -> affine -> [stage 1] -> grid sample -> [stage 2]
    assert len(stages) == 3 and [len(s.plugins) for s in stages] == [1, 1, 0]
    assert "a_crop" in stages[0].outputs and "a_crop" in stages[2].inputs  # skips stage 1
    assert "a_crop" not in stages[1].inputs
    np.testing.assert_array_equal(out["warped"], warped)
    # ORT's Tanh and numpy's may differ in the last bit, which the sampler passes on
    np.testing.assert_allclose(out["y"], sampled + a[:, :, :6, :7] + 1.5, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(out["theta"], feeds["theta"])


def test_plugin_input_of_the_wrong_type_is_a_clear_error(rng):
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node(names.AFFINE_GRID_SAMPLE_OP, ["xh", "theta"], ["y"], domain="stn",
                              **_attrs(OUT))]
    graph = helper.make_graph(
        nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, H, W]),
                        helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["n", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("stn", 1)])
    feeds = _feeds(rng)
    del feeds["g"]
    session = OrtSession(model.SerializeToString()).open()
    with pytest.raises(SessionError, match="float16.*takes float32 X"):
        session.infer(feeds)


def test_python_route_needs_its_hook_and_agrees_with_the_native_route(rng):
    feeds = _feeds(rng)
    with pytest.raises(SessionError, match="could not load"):
        OrtSession(_wired_model(), plugin_route="python").open()
    with OrtSession(_wired_model(), session_hooks=[ort_ops.register],
                    plugin_route="python") as python, OrtSession(_wired_model()) as native:
        assert python._staged is None and native._staged is not None
        a, b = python.infer(feeds), native.infer(feeds)
    for name in ("y", "warped"):
        np.testing.assert_array_equal(a[name], b[name])


def test_bad_route_and_bad_plugin_node():
    with pytest.raises(ValueError, match="plugin_route"):
        OrtSession(b"", plugin_route="fast")
    node = helper.make_node(names.AFFINE_GRID_SAMPLE_OP, ["x", "t"], ["y"], domain="stn",
                            **{**_attrs(OUT), names.ATTR_INTERPOLATION_MODE: 9})
    graph = helper.make_graph(
        [node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
                        helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("stn", 1)])
    with pytest.raises(SessionError, match="interpolation mode 9"):
        OrtSession(model.SerializeToString()).open()
