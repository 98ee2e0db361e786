"""Pick and open a Session for a model file by backend name: the one registry every caller uses."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from stn_deploy.runtime.session import BackendUnavailableError, Session, SessionError

__all__ = ["BACKENDS", "open_session", "default_backend"]

# backend name -> "module:attribute" of a factory(model_path, **options) -> Session.
# Lazy strings, so `import stn_deploy.runtime` never imports tensorrt.
BACKENDS: dict[str, str] = {
    "ort": "stn_deploy.runtime.ort:OrtSession",
    "trt": "stn_deploy.runtime.trt:TrtSession",
}

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _factory(backend: str) -> Callable[..., Session]:
    if backend not in BACKENDS:
        raise SessionError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module_name, attr = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            f"backend {backend!r} is not available here ({exc}); "
            "for TensorRT: pip install 'stn-deploy[trt]' on a machine with an NVIDIA GPU"
        ) from exc
    return getattr(module, attr)


def default_backend(model_path: str | os.PathLike) -> str:
    """The backend a file implies: an engine needs TensorRT, an ONNX file runs on ORT."""
    return "trt" if Path(model_path).suffix in ENGINE_SUFFIXES else "ort"


def open_session(model_path: str | os.PathLike, backend: str = "auto", **options) -> Session:
    """Create and open the session for ``model_path`` (``backend='auto'``: by file suffix)."""
    name = default_backend(model_path) if backend == "auto" else backend
    return _factory(name)(model_path, **options).open()
