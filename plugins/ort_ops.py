"""ONNX Runtime custom ops for domain ``stn``: plugin-flavour graphs on the CPU via the CPU build.

``register(session_options)`` is an OrtSession hook: it declares the three plugin op types as
onnxruntime-extensions Python custom ops (an ``op_type`` of ``"stn::Name"`` puts them in our
domain) that call :mod:`stn_deploy.plugins.cpu`, i.e. the same sampling code as the TensorRT
kernels, and registers the extensions library with the session. float32 tensors only: ORT's
CPU path is a checker of the graph's wiring and values, not a deployment target.
"""

from __future__ import annotations

import threading

import numpy as np

from stn_deploy.plugins import cpu, names
from stn_deploy.plugins.errors import PluginLoadError

__all__ = ["register", "library_path"]

_LOCK = threading.Lock()
_DECLARED = False


def _extensions():
    try:
        import onnxruntime_extensions
    except ImportError as exc:
        raise PluginLoadError(
            "plugin-flavour ONNX on ONNX Runtime needs onnxruntime-extensions: "
            "pip install 'stn-deploy[plugins]' (or pip install onnxruntime-extensions)"
        ) from exc
    return onnxruntime_extensions


def _sampler(attrs: dict) -> dict:
    return {
        "mode": int(attrs[names.ATTR_INTERPOLATION_MODE]),
        "padding_mode": int(attrs[names.ATTR_PADDING_MODE]),
        "align_corners": bool(attrs[names.ATTR_ALIGN_CORNERS]),
    }


def _out_hw(attrs: dict) -> tuple[int, int]:
    return int(attrs[names.ATTR_OUT_HEIGHT]), int(attrs[names.ATTR_OUT_WIDTH])


def _grid_sample(x: np.ndarray, grid: np.ndarray, **attrs) -> np.ndarray:
    return cpu.grid_sample(x, grid, **_sampler(attrs))


def _affine(x: np.ndarray, theta: np.ndarray, **attrs) -> np.ndarray:
    return cpu.affine_grid_sample(x, theta, _out_hw(attrs), **_sampler(attrs))


def _projective(x: np.ndarray, h: np.ndarray, **attrs) -> np.ndarray:
    return cpu.projective_grid_sample(x, h, _out_hw(attrs), **_sampler(attrs))


_KERNELS = {
    names.GRID_SAMPLE_OP: _grid_sample,
    names.AFFINE_GRID_SAMPLE_OP: _affine,
    names.PROJECTIVE_GRID_SAMPLE_OP: _projective,
}


def _declare() -> None:
    """Declare the Python custom ops once per process (the extensions keep a global table)."""
    global _DECLARED
    with _LOCK:
        if _DECLARED:
            return
        ox = _extensions()
        dt = ox.PyCustomOpDef
        for op_type, kernel in _KERNELS.items():
            # Only the sampler fields: declared attributes must be present on every node, and
            # plugin_namespace/plugin_version matter to TensorRT's parser, not to the math.
            attrs = {field: dt.dt_int64 for field in names.FIELDS[op_type]}
            ox.onnx_op(
                op_type=f"{names.ONNX_DOMAIN}::{op_type}",
                inputs=[dt.dt_float, dt.dt_float],
                outputs=[dt.dt_float],
                attrs=attrs,
            )(kernel)
        cpu.load()  # build the CPU library now, not inside the first ORT run
        _DECLARED = True


def library_path() -> str:
    """The onnxruntime-extensions library that hosts the ``stn`` custom ops."""
    _declare()
    return _extensions().get_library_path()


def register(session_options) -> None:
    """OrtSession hook: make ``stn::STN*GridSample`` nodes runnable in this session."""
    session_options.register_custom_ops_library(library_path())
