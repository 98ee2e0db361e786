"""Post-export graph passes on onnx-ir models: IR version pinning."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["IR_VERSION", "pin_ir_version"]

# onnx 1.23 writes IR 14; ONNX Runtime 1.31 reads <= 13 and TensorRT's parsers are safe at <= 10.
# IR 10 covers opset 18-21, everything the exporter emits here.
IR_VERSION = 10


def pin_ir_version(model: ir.Model, version: int = IR_VERSION) -> ir.Model:
    """Write the model with ``version`` as its IR version (lowering only, never raising it)."""
    model.ir_version = min(model.ir_version or version, version)
    return model
