"""The fp16 graph pass: any module that exports in fp32 exports in fp16, grid math kept fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stn_deploy.export import geometry
from stn_deploy.export.errors import ExportError
from stn_deploy.export.fp16 import to_fp16
from stn_deploy.export.onnx_export import export_module

from .conftest import CASES, R


@pytest.fixture(scope="module")
def ocr_fp16(tmp_path_factory):
    """The OCR TPS net builds a zero block with .float() inside forward: model.half() breaks."""
    case = CASES["ocr-tps"]
    path = tmp_path_factory.mktemp("fp16") / "ocr.onnx"
    result = export_module(R.make(case), case.input_shape, path, precision="fp16")
    return onnx.shape_inference.infer_shapes(onnx.load(str(path))), result


def test_a_module_fixing_float32_in_forward_exports_in_fp16(ocr_fp16):
    model, result = ocr_fp16
    assert result.precision == "fp16" and result.contract
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert result.fp16.kept_fp32 >= 8 and "kept fp32 for grid generation" in result.summary()


def test_the_whole_tps_grid_generator_and_its_constants_stay_fp32(ocr_fp16):
    model, _ = ocr_fp16
    index = geometry.GraphIndex(model)
    (sampler,) = geometry.samplers(model)
    path = geometry.geometric_path(index, sampler)
    assert {"MatMul", "Concat", "Reshape"} <= {n.op_type for n in path.nodes}
    for node in path.nodes:
        assert index.elem_type(node.output[0]) in (TensorProto.FLOAT, TensorProto.INT64), node.name
        for name in node.input:
            if name in index.initializers and index.elem_type(name) in (TensorProto.FLOAT,
                                                                        TensorProto.FLOAT16):
                assert index.elem_type(name) == TensorProto.FLOAT, name  # TPS matrices
    assert index.elem_type(sampler.image) == TensorProto.FLOAT  # sampled in fp32 too
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(index.elem_type(n.output[0]) == TensorProto.FLOAT16 for n in convs)


def test_control_flow_is_refused_with_what_to_do():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["y1"])], "then", [],
                             [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ExportError, match="control flow.*--precision fp32"):
        to_fp16(model)


def test_weights_beyond_the_fp16_range_are_clipped_and_reported():
    big = numpy_helper.from_array(np.array([1e6, -3.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"], name="mul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    converted, report = to_fp16(model)
    weights = numpy_helper.to_array(converted.graph.initializer[0])
    assert weights.dtype == np.float16 and weights[0] == np.finfo(np.float16).max
    assert report.clipped == 1 and "1 weight(s) clipped" in report.summary()
