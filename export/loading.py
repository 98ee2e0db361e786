"""Build the PyTorch model to export or verify: a checkpoint directory or a user's own module.

A user module comes as ``pkg.mod:Class`` (imported like any Python module, so its folder must be
on ``sys.path`` or the current directory) with optional constructor kwargs and a weights file:
``.safetensors``, or a ``.pt`` state_dict read with ``torch.load(weights_only=True)`` (never an
arbitrary pickle).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stn_deploy.export.errors import ExportError

__all__ = ["LoadedModel", "load_user_module", "load_checkpoint", "parse_shape"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to export, its input shape (C, H, W) and where its test data comes from."""

    model: nn.Module
    input_shape: tuple[int, ...]
    name: str
    dataset: str | None = None
    distortion: str | None = None
    config: dict[str, Any] | None = None


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,1,28,28' or '1,28,28' -> a tuple of positive ints."""
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise ExportError(f"bad shape {text!r}; give ints like 1,1,28,28") from None
    if len(dims) not in (3, 4) or any(d <= 0 for d in dims):
        raise ExportError(f"bad shape {text!r}; expected C,H,W or N,C,H,W, e.g. 1,1,28,28")
    return dims


def _import_class(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"--module {spec!r} must look like pkg.mod:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(
            f"cannot import {module_name!r} ({exc}); run from the folder that holds it or add "
            "that folder to PYTHONPATH"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ExportError(f"module {module_name!r} has no attribute {attr!r}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe or bad files
        raise ExportError(
            f"could not read {str(path)!r} as a state_dict ({exc}); save it with "
            "torch.save(model.state_dict(), path) or as .safetensors"
        ) from exc
    if not isinstance(state, dict):
        raise ExportError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict")
    return state


def load_user_module(
    spec: str, weights: str | os.PathLike | None = None, kwargs: dict | str | None = None
) -> nn.Module:
    """Instantiate ``pkg.mod:Class(**kwargs)`` and load ``weights`` strictly; eval mode."""
    cls = _import_class(spec)
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise ExportError(f"--kwargs is not JSON ({exc}); e.g. '{{\"channels\": 1}}'") from exc
    try:
        model = cls(**(kwargs or {}))
    except TypeError as exc:
        raise ExportError(f"cannot build {spec} with kwargs {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ExportError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = _read_weights(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"weights {weights} do not fit {spec}: {exc}") from exc
    return model.eval()


def load_checkpoint(ckpt_dir: str | os.PathLike) -> LoadedModel:
    """A checkpoint directory (model.safetensors + config.json) as a LoadedModel."""
    path = Path(ckpt_dir)
    if not path.is_dir():
        bundled = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / str(ckpt_dir)
        if bundled.is_dir():
            path = bundled
        else:
            raise ExportError(
                f"no checkpoint directory {str(ckpt_dir)!r}; train one with "
                "`stn-deploy train` or pass a shipped one such as models/checkpoints/tutorial-R"
            )
    try:
        from stn_deploy.models import load_model
    except ImportError as exc:
        raise ExportError(f"the models package cannot load checkpoints yet ({exc})") from exc
    loaded = load_model(path)
    model, config = loaded if isinstance(loaded, tuple) else (loaded, None)
    if config is None:
        config = json.loads((path / "config.json").read_text())
    config = config if isinstance(config, dict) else vars(config)
    shape = tuple(int(d) for d in config.get("input_shape", ()))
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ExportError(f"{path}/config.json has no usable input_shape (got {shape})")
    return LoadedModel(
        model=model.eval(),
        input_shape=shape,
        name=path.name,
        dataset=config.get("dataset"),
        distortion=config.get("distortion"),
        config=config,
    )
