"""STN architectures, distorted-digit data, training and checkpoints."""

from stn_deploy.models.checkpoint import (
    LoadedModel,
    checkpoint_dir,
    load_model,
    load_user_model,
    save_checkpoint,
    shipped_checkpoints,
)
from stn_deploy.models.errors import CheckpointError, DataError, ModelError
from stn_deploy.models.sampling import SamplerConfig, Warp
from stn_deploy.models.zoo import ARCHS, build_model

__all__ = [
    "ARCHS",
    "CheckpointError",
    "DataError",
    "LoadedModel",
    "ModelError",
    "SamplerConfig",
    "Warp",
    "build_model",
    "checkpoint_dir",
    "load_model",
    "load_user_model",
    "save_checkpoint",
    "shipped_checkpoints",
]
