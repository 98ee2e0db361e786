"""Build the PyTorch model to export or verify: a checkpoint or a user's own module.

Thin adapters over ``stn_deploy.models`` (which owns checkpoints and user-module loading: a
``pkg.mod:Class`` or ``file.py:Class`` with ``--kwargs`` and a ``.safetensors`` / ``.pt``
state_dict read without unpickling objects); their errors surface unchanged.
"""

from __future__ import annotations

import json
import os
import sys

from stn_deploy.export.errors import ExportError
from stn_deploy.models.checkpoint import LoadedModel

__all__ = ["LoadedModel", "load_user_module", "load_checkpoint", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,1,28,28' or '1,28,28' -> (C, H, W) as positive ints (a batch entry is dropped)."""
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise ExportError(f"bad shape {text!r}; give ints like 1,1,28,28") from None
    if len(dims) not in (3, 4) or any(d <= 0 for d in dims):
        raise ExportError(f"bad shape {text!r}; expected C,H,W or N,C,H,W, e.g. 1,1,28,28")
    return dims[-3:]


def load_user_module(
    spec: str,
    weights: str | os.PathLike,
    kwargs: dict | str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """``pkg.mod:Class(**kwargs)`` with ``weights`` loaded strictly, in eval mode.

    The current directory is importable, as it is for ``python -m``: a user runs the command
    next to their own package.
    """
    from stn_deploy.models import load_user_model

    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise ExportError(f"--kwargs is not JSON ({exc}); e.g. '{{\"hidden\": 8}}'") from exc
    if not weights:
        raise ExportError("--module needs --weights FILE (.safetensors or a .pt state_dict)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_user_model(spec, weights, kwargs, input_shape)


def load_checkpoint(ckpt_dir: str | os.PathLike) -> LoadedModel:
    """A checkpoint directory, or a shipped checkpoint's name such as ``tutorial-R``."""
    from stn_deploy.models import load_model

    return load_model(ckpt_dir)
