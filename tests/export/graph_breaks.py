"""Deliberately broken exports, made by editing a correct graph: what verify must catch."""

from __future__ import annotations

import copy

import onnx

from stn_deploy.export import geometry


def _first_sampler(model: onnx.ModelProto) -> onnx.NodeProto:
    return geometry.samplers(model)[0].node


def flip_align_corners(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first sampler samples with the other align_corners."""
    model = copy.deepcopy(model)
    node = _first_sampler(model)
    attr = next(a for a in node.attribute if a.name == "align_corners")
    attr.i = 1 - attr.i
    return model


def zeros_to_border(model: onnx.ModelProto) -> onnx.ModelProto:
    """The first sampler pads with border where the module pads with zeros (the default)."""
    model = copy.deepcopy(model)
    node = _first_sampler(model)
    if node.domain == "stn":
        attr = next(a for a in node.attribute if a.name == "padding_mode")
        assert attr.i == 0, "the module must pad with zeros"
        attr.i = 1
    else:
        assert all(a.s in (b"zeros",) for a in node.attribute if a.name == "padding_mode")
        kept = [a for a in node.attribute if a.name != "padding_mode"]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("padding_mode", "border")])
    return model


def fp16_geometry(model32: onnx.ModelProto) -> onnx.ModelProto:
    """What a float16 converter that only keeps the sampler in fp32 writes: grid math in fp16."""
    from stn_deploy.export import fp16
    from stn_deploy.export.plugin_flavour import register_schemas

    register_schemas()
    model = onnx.shape_inference.infer_shapes(copy.deepcopy(model32))
    fp16._Converter(model, [s.node for s in geometry.samplers(model)]).run()
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)
