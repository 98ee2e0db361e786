"""Errors of the models package: bad architectures, checkpoints and data sets."""

from stn_deploy.errors import StnDeployError


class ModelError(StnDeployError):
    """Base of every models-package error."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt, or does not match the architecture it names."""


class DataError(ModelError):
    """A data set is missing or malformed."""
