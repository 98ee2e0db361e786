"""Errors of the export package: export failures, contract violations, verification misses."""

from stn_deploy.errors import StnDeployError


class ExportError(StnDeployError):
    """Base of every export-package error."""


class ContractError(ExportError):
    """An ONNX graph holds constructs TensorRT would reject or silently mis-run."""


class VerificationError(ExportError):
    """An exported model does not match PyTorch within tolerance."""
