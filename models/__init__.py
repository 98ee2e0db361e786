"""STN architectures, distorted-digit data, training and checkpoints."""

from stn_deploy.models.errors import CheckpointError, DataError, ModelError
from stn_deploy.models.sampling import SamplerConfig, Warp

__all__ = ["CheckpointError", "DataError", "ModelError", "SamplerConfig", "Warp"]
