"""The GridSample plugin's public names on the Python side (src/pluginNames.h holds the C++ side).

Op types double as TensorRT plugin names; ONNX nodes live in domain ``stn`` and carry
``plugin_namespace`` / ``plugin_version`` so the TensorRT ONNX parser finds the creator.
"""

from __future__ import annotations

from stn_deploy.models.sampling import INTERPOLATION_MODES, PADDING_MODES

__all__ = [
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "ONNX_DOMAIN",
    "GRID_SAMPLE_OP",
    "AFFINE_GRID_SAMPLE_OP",
    "PROJECTIVE_GRID_SAMPLE_OP",
    "OP_TYPES",
    "ATTR_INTERPOLATION_MODE",
    "ATTR_PADDING_MODE",
    "ATTR_ALIGN_CORNERS",
    "ATTR_OUT_HEIGHT",
    "ATTR_OUT_WIDTH",
    "SAMPLER_FIELDS",
    "FIELDS",
    "INTERPOLATION_MODES",
    "PADDING_MODES",
    "TENSORRT_TYPES",
    "ONNXRUNTIME_TYPES",
    "mode_int",
    "padding_int",
]

PLUGIN_NAMESPACE = "stn"
PLUGIN_VERSION = "1"
ONNX_DOMAIN = "stn"

GRID_SAMPLE_OP = "STNGridSample"
AFFINE_GRID_SAMPLE_OP = "STNAffineGridSample"
PROJECTIVE_GRID_SAMPLE_OP = "STNProjectiveGridSample"
OP_TYPES = (GRID_SAMPLE_OP, AFFINE_GRID_SAMPLE_OP, PROJECTIVE_GRID_SAMPLE_OP)

ATTR_INTERPOLATION_MODE = "interpolation_mode"
ATTR_PADDING_MODE = "padding_mode"
ATTR_ALIGN_CORNERS = "align_corners"
ATTR_OUT_HEIGHT = "out_height"
ATTR_OUT_WIDTH = "out_width"

SAMPLER_FIELDS = (ATTR_INTERPOLATION_MODE, ATTR_PADDING_MODE, ATTR_ALIGN_CORNERS)
# The creator's field list per op type, in the order getFieldNames() reports it.
FIELDS = {
    GRID_SAMPLE_OP: SAMPLER_FIELDS,
    AFFINE_GRID_SAMPLE_OP: (ATTR_OUT_HEIGHT, ATTR_OUT_WIDTH, *SAMPLER_FIELDS),
    PROJECTIVE_GRID_SAMPLE_OP: (ATTR_OUT_HEIGHT, ATTR_OUT_WIDTH, *SAMPLER_FIELDS),
}


# Element types (X, coordinates, Y) each implementation accepts, as ONNX type names, for every
# op type. TensorRT: the plugin's supportsFormatCombination (fp16 is storage only, math is fp32).
# ONNX Runtime: the CPU kernels, float32 only, on both routes (runtime/ort_stages.py, which
# rejects other types with a clear error, and the Python custom ops of ort_ops). The exporter
# feeds plugin nodes of fp16 graphs float32 through Casts, the one combination both accept;
# `stn-deploy check` flags any other.
TENSORRT_TYPES = (
    ("float", "float", "float"),
    ("float16", "float16", "float16"),
    ("float16", "float", "float16"),
)
ONNXRUNTIME_TYPES = (("float", "float", "float"),)


def mode_int(mode: str | int) -> int:
    """PyTorch's interpolation enum for a mode name (or a valid int passed through)."""
    return _enum(mode, INTERPOLATION_MODES, "interpolation mode", "'bilinear'")


def padding_int(padding: str | int) -> int:
    """PyTorch's padding enum for a padding-mode name (or a valid int passed through)."""
    return _enum(padding, PADDING_MODES, "padding mode", "'zeros'")


def _enum(value: str | int, table: dict[str, int], what: str, example: str) -> int:
    if isinstance(value, str) and value in table:
        return table[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        return value
    raise ValueError(
        f"{what} {value!r} is not one of {sorted(table)} (or {sorted(table.values())}); "
        f"e.g. {example}"
    )
