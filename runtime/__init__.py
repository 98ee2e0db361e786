"""Inference sessions (ONNX Runtime, PyTorch, TensorRT) behind one interface; serving them is
:mod:`stn_deploy.runtime.serving`."""

from stn_deploy.runtime.backends import open_session
from stn_deploy.runtime.ort import OrtSession
from stn_deploy.runtime.session import (
    BackendUnavailableError,
    InputError,
    Session,
    SessionError,
    TensorSpec,
)
from stn_deploy.runtime.torch_session import TorchSession

__all__ = [
    "BackendUnavailableError",
    "InputError",
    "OrtSession",
    "Session",
    "SessionError",
    "TensorSpec",
    "TorchSession",
    "open_session",
]
