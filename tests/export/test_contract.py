"""Each contract rule on a small hand-built graph: the bad construct is found, the good is not."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from stn_deploy.export.contract import RULES, check_model


def _gridsample_model(
    mode="bilinear", opset=18, ir_version=10, batch="batch", x_rank=4, extra_nodes=(),
    domains=(), padding="zeros",
):
    x_dims = [batch, 1, 8, 8][:x_rank] if x_rank <= 4 else [batch, 1, 2, 8, 8]
    nodes = [
        helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler", mode=mode,
                         padding_mode=padding, align_corners=0),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, [batch, 8, 8, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    return model


def test_clean_graph_passes():
    report = check_model(_gridsample_model())
    assert report and not report.findings, report.format()


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_opset20_mode_names_are_errors(mode):
    report = check_model(_gridsample_model(mode=mode, opset=20))
    assert not report
    assert {"gridsample-mode", "gridsample-opset"} <= report.rules()
    finding = next(f for f in report.errors if f.rule == "gridsample-mode")
    assert finding.node == "sampler" and "NEAREST" in finding.problem and "opset 18" in finding.fix


def test_affine_grid_node_is_an_error():
    affine = helper.make_node("AffineGrid", ["theta", "size"], ["g2"], name="ag")
    report = check_model(_gridsample_model(opset=20, extra_nodes=[affine]))
    assert "affine-grid" in report.rules()
    assert any(f.node == "ag" for f in report.errors)


def test_gridsample_input_of_rank5_is_an_error():
    report = check_model(_gridsample_model(x_rank=5))
    assert [f.rule for f in report.errors if f.rule == "gridsample-rank"] == ["gridsample-rank"]


def test_fixed_batch_is_an_error():
    report = check_model(_gridsample_model(batch=1))
    assert not report and "dynamic-batch" in report.rules()


def test_opset_above_19_with_gridsample_is_an_error_even_with_good_names():
    report = check_model(_gridsample_model(opset=20))
    assert report.rules() == {"gridsample-opset"}


def test_new_ir_version_is_an_error():
    report = check_model(_gridsample_model(ir_version=11))
    assert report.rules() == {"ir-version"}
    assert "ir_version = 10" in report.errors[0].fix


def _plugin_node(**attrs):
    fields = {"interpolation_mode": 0, "padding_mode": 0, "align_corners": 0}
    return helper.make_node("STNGridSample", ["x", "grid"], ["z"], name="plug", domain="stn",
                            **{**fields, **attrs})


def test_plugin_node_missing_a_creator_field_is_an_error():
    node = _plugin_node(plugin_namespace="stn", plugin_version="1")
    del node.attribute[[a.name for a in node.attribute].index("padding_mode")]
    report = check_model(_gridsample_model(extra_nodes=[node], domains=["stn"]))
    assert [f.rule for f in report.errors] == ["plugin-attributes"]
    assert "padding_mode" in report.errors[0].problem


def test_plugin_node_with_attributes_passes():
    node = _plugin_node(plugin_namespace="stn", plugin_version="1")
    report = check_model(_gridsample_model(extra_nodes=[node], domains=["stn"]))
    assert report, report.format()


@pytest.mark.parametrize("missing", ["plugin_namespace", "plugin_version"])
def test_plugin_node_missing_attribute_is_an_error(missing):
    attrs = {"plugin_namespace": "stn", "plugin_version": "1"}
    del attrs[missing]
    report = check_model(_gridsample_model(extra_nodes=[_plugin_node(**attrs)], domains=["stn"]))
    assert not report
    assert any(missing in f.problem and f.node == "plug" for f in report.errors)


def test_unknown_domain_is_an_error():
    node = helper.make_node("Fancy", ["y"], ["w"], name="fancy", domain="com.example")
    report = check_model(_gridsample_model(extra_nodes=[node], domains=["com.example"]))
    assert report.rules() == {"unknown-domain"}


def test_bad_padding_mode_is_an_error():
    report = check_model(_gridsample_model(padding="wrap"))
    assert report.rules() == {"gridsample-mode"}


def test_every_rule_has_a_test():
    tested = {"gridsample-mode", "affine-grid", "gridsample-rank", "gridsample-opset",
              "ir-version", "dynamic-batch", "plugin-attributes", "unknown-domain", "input-dtype",
              "plugin-types", "fp16-geometry"}
    assert set(RULES) == tested


def test_integer_input_is_a_warning_only():
    model = _gridsample_model()
    model.graph.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]))
    report = check_model(model)
    assert report and report.rules() == {"input-dtype"}


def test_check_reads_files_and_reports_missing_ones(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_gridsample_model(mode="linear", opset=20), str(path))
    assert not check_model(path)
    from stn_deploy.export.errors import ContractError

    with pytest.raises(ContractError, match="stn-deploy export"):
        check_model(tmp_path / "absent.onnx")


def _typed_plugin_model(x_type, grid_type):
    node = _plugin_node(plugin_namespace="stn", plugin_version="1")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", x_type, ["batch", 1, 8, 8]),
         helper.make_tensor_value_info("grid", grid_type, ["batch", 8, 8, 2])],
        [helper.make_tensor_value_info("z", x_type, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("stn", 1)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize(
    ("x_type", "grid_type", "refused_by"),
    [
        (TensorProto.FLOAT, TensorProto.FLOAT, set()),
        (TensorProto.FLOAT16, TensorProto.FLOAT, {"ONNX Runtime"}),  # TensorRT takes it
        (TensorProto.FLOAT16, TensorProto.FLOAT16, {"ONNX Runtime"}),
        (TensorProto.FLOAT, TensorProto.FLOAT16, {"ONNX Runtime", "TensorRT"}),
    ],
)
def test_plugin_node_types_against_both_implementations(x_type, grid_type, refused_by):
    report = check_model(_typed_plugin_model(x_type, grid_type))
    found = [f for f in report.errors if f.rule == "plugin-types"]
    assert {who for who in ("ONNX Runtime", "TensorRT") if any(who in f.problem for f in found)} \
        == refused_by
    assert all(f.node == "plug" and "Casts" in f.fix for f in found)


def _affine_grid_model(grid_math):
    """theta (fp16 input) -> affine grid math in ``grid_math`` precision -> fp32 GridSample."""
    import numpy as np
    from onnx import numpy_helper

    half = TensorProto.FLOAT16
    base = np.stack([*np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8)), np.ones((8, 8))],
                    axis=-1).reshape(64, 3)
    dtype = np.float16 if grid_math == half else np.float32
    nodes = [
        helper.make_node("Transpose", ["theta_in"], ["theta_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["base", "theta_t"], ["points"], name="grid_matmul"),
        helper.make_node("Reshape", ["points", "shape"], ["grid"], name="grid_reshape"),
        helper.make_node("Cast", ["grid"], ["grid32"], to=TensorProto.FLOAT),
        helper.make_node("GridSample", ["x", "grid32"], ["y"], name="sampler"),
    ]
    if grid_math != half:  # the transform enters fp32 first, as stn-deploy's fp16 export does
        nodes.insert(0, helper.make_node("Cast", ["theta"], ["theta_in"], to=TensorProto.FLOAT))
    else:
        nodes.insert(0, helper.make_node("Identity", ["theta"], ["theta_in"]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8]),
         helper.make_tensor_value_info("theta", half, ["batch", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(base.astype(dtype), "base"),
                     numpy_helper.from_array(np.array([-1, 8, 8, 2], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_grid_math_in_fp16_is_an_error_naming_the_first_fp16_node():
    report = check_model(_affine_grid_model(TensorProto.FLOAT16))
    (finding,) = [f for f in report.errors if f.rule == "fp16-geometry"]
    assert finding.node == "grid_matmul" and "fp16" in finding.problem
    assert check_model(_affine_grid_model(TensorProto.FLOAT)).rules() == set()
