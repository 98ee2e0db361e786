"""Checkpoints: save a zoo model atomically, load ours or a user's model with clear errors.

A checkpoint is a directory with ``model.safetensors`` and ``config.json`` (architecture name
and kwargs, input shape, normalisation, classes, data, seed, training settings, metrics,
torch version, date, and the weights' sha256 so a config never pairs with foreign weights).
A user model comes in as ``pkg.mod:Class`` (or ``path/to/file.py:Class``) + kwargs + a
``.safetensors`` or ``.pt`` state_dict; ``.pt`` files are read with
``torch.load(weights_only=True)`` only, never unpickled freely.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn_deploy.models.errors import CheckpointError, ModelError
from stn_deploy.models.zoo import ARCHS, build_model, convert_tutorial_state_dict

__all__ = [
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "CHECKPOINTS_DIR",
    "LoadedModel",
    "save_checkpoint",
    "load_model",
    "load_user_model",
    "load_state_dict_file",
    "shipped_checkpoints",
    "checkpoint_dir",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "stn-deploy-checkpoint/1"
CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"
_MAX_LISTED = 12


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode) and what is known about it."""

    model: nn.Module
    input_shape: tuple[int, int, int]
    config: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    dataset: str | None = None
    distortion: str | None = None

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or not all(int(d) > 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be (C, H, W) > 0, e.g. (1, 28, 28); got "
                             f"{self.input_shape!r}")


def shipped_checkpoints() -> dict[str, Path]:
    """Name -> directory of every checkpoint shipped in ``models/checkpoints``."""
    if not CHECKPOINTS_DIR.is_dir():
        return {}
    return {
        p.name: p for p in sorted(CHECKPOINTS_DIR.iterdir()) if (p / CONFIG_FILE).is_file()
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is for sharing
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _rounded(t: Tensor) -> list[float]:
    return [round(float(v), 6) for v in t.flatten()]


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    return value


def save_checkpoint(
    model: nn.Module, out_dir: str | os.PathLike, config: Mapping[str, Any]
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json``; returns ``out_dir``.

    ``config`` needs ``arch`` and ``kwargs`` (what :func:`build_model` takes); input shape,
    normalisation, torch version, date and the weights' sha256 are filled in here. Each file is
    written to a temp file in the same directory and moved in with ``os.replace``, weights
    first: an interrupted save leaves either the old pair or new weights whose sha256 the old
    config does not match, which :func:`load_model` reports.
    """
    from safetensors.torch import save_file

    if "arch" not in config or "kwargs" not in config:
        raise CheckpointError("checkpoint config needs 'arch' and 'kwargs' (build_model's input)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    record = dict(_to_jsonable(config))
    record.setdefault("format", FORMAT)
    record.setdefault("name", out.name)
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        record.setdefault("input_shape", list(shape))
    norm = getattr(model, "norm", None)
    if norm is not None:
        record.setdefault(
            "normalisation",
            {"mean": _rounded(norm.mean), "std": _rounded(norm.std)},
        )
    record.setdefault("classes", [str(i) for i in range(getattr(model, "num_classes", 10))])
    record["torch_version"] = torch.__version__
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    record["weights_sha256"] = _sha256(out / WEIGHTS_FILE)
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    _atomic_write(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return out


def _unwrap_state(obj: Any, path: Path) -> dict[str, Tensor]:
    # Common containers: {"state_dict": ...} (Lightning) and {"model_state_dict": ...}.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state_dict of tensors (got {type(obj).__name__}); save one "
            "with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
        )
    return convert_tutorial_state_dict(obj)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.pt``/``.pth`` state_dict; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap_state(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                "corrupt: copy it again or re-run `stn-deploy train`"
            ) from exc
    if suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path} could not be read with torch.load(weights_only=True): {first}. Only "
                "state_dicts of tensors are accepted (arbitrary pickled objects are never "
                "loaded); re-save with torch.save(model.state_dict(), path)"
            ) from exc
        return _unwrap_state(obj, path)
    raise CheckpointError(
        f"unsupported weights file {path.name!r}: use .safetensors or a .pt state_dict"
    )


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def apply_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str, fix: str) -> None:
    """Strictly load ``state`` into ``model``; every mismatch is named in a CheckpointError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listing(shapes)}")
    if problems:
        raise CheckpointError(
            f"weights in {source} do not match {type(model).__name__}: " + "; ".join(problems)
            + f". {fix}"
        )
    model.load_state_dict(state, strict=True)


def _read_config(ckpt: Path) -> dict[str, Any]:
    path = ckpt / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt} has no {CONFIG_FILE}: not a stn-deploy checkpoint directory. Train one with "
            "`stn-deploy train --arch st-cnn --out DIR`, or load your own model with "
            "--module pkg.mod:Class --weights FILE"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it or retrain") from exc
    if not isinstance(config, dict) or "arch" not in config:
        raise CheckpointError(f"{path} has no 'arch' entry; expected e.g. {{\"arch\": \"st-cnn\"}}")
    if config["arch"] not in ARCHS:
        raise CheckpointError(
            f"{path} names unknown architecture {config['arch']!r}; known: {sorted(ARCHS)}. "
            "Upgrade stn-deploy or load the model with --module pkg.mod:Class --weights FILE"
        )
    return config


def checkpoint_dir(ckpt_dir: str | os.PathLike) -> Path:
    """The folder of a checkpoint given as a directory or a shipped checkpoint's name."""
    path = Path(ckpt_dir)
    if path.is_dir():
        return path
    shipped = shipped_checkpoints()
    if str(ckpt_dir) in shipped:
        return shipped[str(ckpt_dir)]
    raise CheckpointError(
        f"checkpoint {ckpt_dir} not found: neither a directory nor a shipped checkpoint "
        f"({', '.join(shipped) or 'none shipped'})"
    )


def load_model(ckpt_dir: str | os.PathLike) -> LoadedModel:
    """Load a checkpoint directory (or a shipped checkpoint's name, e.g. ``tutorial-R``)."""
    ckpt = checkpoint_dir(ckpt_dir)
    config = _read_config(ckpt)
    weights = ckpt / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{ckpt} has a config but no {WEIGHTS_FILE}; retrain or restore it")
    digest = config.get("weights_sha256")
    if digest and _sha256(weights) != digest:
        raise CheckpointError(
            f"{weights} does not match the sha256 recorded in {ckpt / CONFIG_FILE}: the pair is "
            "from different saves (an interrupted save or a copied file). Retrain or restore both"
        )
    try:
        model = build_model(config["arch"], **config.get("kwargs", {}))
    except ModelError as exc:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: {exc}") from exc
    state = load_state_dict_file(weights)
    apply_state_dict(
        model, state, str(weights),
        f"The config's arch/kwargs ({config['arch']}, {config.get('kwargs', {})}) must be the "
        "ones the weights were trained with",
    )
    model.eval()
    return LoadedModel(
        model=model,
        input_shape=tuple(int(d) for d in config.get("input_shape", model.input_shape)),
        config=config,
        name=ckpt.name,
        dataset=config.get("dataset"),
        distortion=config.get("distortion"),
    )


def _import_class(spec: str) -> type:
    if ":" not in spec:
        raise CheckpointError(f"--module {spec!r} must look like pkg.mod:Class or file.py:Class")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise CheckpointError(f"module file {path} does not exist")
            name = f"_stn_user_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise CheckpointError(
            f"cannot import {mod_name!r} ({exc}); put its folder on PYTHONPATH or pass a file "
            "path, e.g. --module my_models/stn.py:Net"
        ) from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise CheckpointError(f"{spec}: {attr!r} is not an nn.Module class in {mod_name}")
    return cls


def load_user_model(
    module: str,
    weights: str | os.PathLike,
    kwargs: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> LoadedModel:
    """Build ``module`` (``pkg.mod:Class``) with ``kwargs`` and load ``weights`` into it.

    The input shape comes from ``input_shape``, else the model's ``input_shape`` attribute.
    """
    cls = _import_class(module)
    try:
        model = cls(**dict(kwargs or {}))
    except TypeError as exc:
        raise CheckpointError(
            f"{module}({dict(kwargs or {})}) failed: {exc}; pass the constructor's arguments "
            "with --kwargs '{\"name\": value}'"
        ) from exc
    state = load_state_dict_file(weights)
    apply_state_dict(
        model, state, str(weights),
        "Check --module and --kwargs: they must build the model the weights were saved from",
    )
    model.eval()
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise CheckpointError(
            f"the input shape of {module} is unknown: pass it, e.g. --input-shape 1,28,28"
        )
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise CheckpointError(f"input shape must be C,H,W, e.g. 1,28,28; got {shape}")
    config = {"module": module, "kwargs": dict(kwargs or {}), "weights": str(weights),
              "input_shape": list(shape)}
    return LoadedModel(model=model, input_shape=shape, config=config, name=cls.__name__)
