"""Post-export graph passes on onnx-ir models: IR version pinning and fp32 coordinate islands."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["IR_VERSION", "pin_ir_version", "drop_fp16_round_trips", "dtype_of"]

# onnx 1.23 writes IR 14; ONNX Runtime 1.31 reads <= 13 and TensorRT's parsers are safe at <= 10.
# IR 10 covers opset 18-21, everything the exporter emits here.
IR_VERSION = 10


def pin_ir_version(model: ir.Model, version: int = IR_VERSION) -> ir.Model:
    """Write the model with ``version`` as its IR version (lowering only, never raising it)."""
    model.ir_version = min(model.ir_version or version, version)
    return model


def _cast_to(node: ir.Node) -> int | None:
    attr = node.attributes.get("to")
    return None if attr is None else attr.as_int()


def drop_fp16_round_trips(model: ir.Model) -> int:
    """Skip every fp32 -> Cast(fp16) -> Cast(fp32) chain so the value stays fp32.

    The fp16 flavour traces a half-precision model whose grid math was kept in fp32; the traced
    graph still rounds the grid to fp16 between the grid generator and the sampler (which casts
    it back). Removing the round trip keeps sampling coordinates at full precision. Returns the
    number of chains rewired.
    """
    rewired = 0
    for node in list(model.graph):
        if node.op_type != "Cast" or node.domain != "" or _cast_to(node) != ir.DataType.FLOAT:
            continue
        down = node.inputs[0].producer() if node.inputs[0] is not None else None
        if down is None or down.op_type != "Cast" or _cast_to(down) != ir.DataType.FLOAT16:
            continue
        source = down.inputs[0]
        if source is None or dtype_of(source) != ir.DataType.FLOAT:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        out.replace_all_uses_with(source)
        rewired += 1
    if rewired:
        _remove_dead_nodes(model)
    return rewired


def _remove_dead_nodes(model: ir.Model) -> None:
    graph = model.graph
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)
                changed = True


def dtype_of(value: ir.Value) -> ir.DataType | None:
    """The element type of ``value`` if known."""
    return value.dtype
