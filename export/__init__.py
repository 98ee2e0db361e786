"""ONNX export of trained STNs, the TensorRT contract check, and verification against PyTorch."""

from stn_deploy.export.errors import ContractError, ExportError, VerificationError

__all__ = ["ContractError", "ExportError", "VerificationError"]
