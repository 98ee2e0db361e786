"""Inference sessions (ONNX Runtime, PyTorch, TensorRT) behind one interface, and the server."""

from stn_deploy.runtime.backends import open_session
from stn_deploy.runtime.batcher import DynamicBatcher
from stn_deploy.runtime.batcher_config import BatcherConfig
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
    "BatcherConfig",
    "DynamicBatcher",
    "InputError",
    "OrtSession",
    "Session",
    "SessionError",
    "TensorSpec",
    "TorchSession",
    "open_session",
]
