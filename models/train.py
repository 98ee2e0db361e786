"""Training and evaluation of zoo models on distorted digits, ending in a checkpoint + figure.

Adam with a cosine schedule; the localisation nets train at ``loc_lr_scale`` (0.1) times the
learning rate, as the paper recommends. Every epoch draws fresh training distortions from
``(seed, epoch)``; the test split is fixed. With the same seed and thread count a run is
bit-for-bit repeatable.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn_deploy.models.checkpoint import save_checkpoint
from stn_deploy.models.data import DISTORTIONS, load_split
from stn_deploy.models.errors import ModelError
from stn_deploy.models.figure import save_rectification_figure
from stn_deploy.models.sampling import WARPS
from stn_deploy.models.zoo import ARCHS, build_model

__all__ = ["TrainConfig", "train", "evaluate", "checkpoint_name", "config_from_checkpoint",
           "FIGURE_FILE"]

FIGURE_FILE = "figure.png"
_BASELINES = ("cnn", "fcn")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the checkpoint's config.json)."""

    arch: str = "st-cnn"
    transform: str | None = "affine"
    distortion: str = "R"
    data: str = "mnist5k"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    loc_lr_scale: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    limit: int | None = None
    threads: int | None = 2

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ModelError(f"unknown --arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.arch in _BASELINES and self.transform is not None:
            raise ModelError(f"--arch {self.arch} has no transformer; drop --transform")
        if self.arch not in _BASELINES and self.transform not in WARPS:
            raise ModelError(
                f"--transform {self.transform!r} is not one of {sorted(WARPS)}; e.g. affine"
            )
        if self.distortion not in DISTORTIONS:
            raise ModelError(f"--distortion {self.distortion!r}: choose one of {DISTORTIONS}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ModelError("--epochs, --batch-size and --lr must be positive, e.g. --epochs 10")

    def model_kwargs(self, input_shape: tuple[int, ...]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"in_channels": input_shape[0], "input_hw": list(input_shape[1:])}
        if self.transform is not None:
            kwargs["transform"] = self.transform
        return kwargs

    def command(self, out: str) -> str:
        """The ``stn-deploy train`` command line that reproduces this run."""
        parts = ["stn-deploy", "train", "--arch", self.arch]
        if self.transform is not None:
            parts += ["--transform", self.transform]
        parts += ["--distortion", self.distortion, "--data", self.data,
                  "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
                  "--lr", repr(self.lr), "--loc-lr-scale", repr(self.loc_lr_scale),
                  "--seed", str(self.seed)]
        if self.limit is not None:
            parts += ["--limit", str(self.limit)]
        return shlex.join([*parts, "--out", out])


def config_from_checkpoint(record: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint's config.json records (to reproduce its training run)."""
    training = record.get("training")
    if not isinstance(training, dict):
        raise ModelError("this checkpoint records no training run (no 'training' in config.json)")
    names = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in training.items() if k in names})


def checkpoint_name(arch: str, transform: str | None, distortion: str) -> str:
    """The shipped folder name: ``<arch>[-<transform>]-<distortion>`` (tutorial: no transform)."""
    middle = "" if transform is None or arch == "tutorial" else f"-{transform}"
    return f"{arch}{middle}-{distortion}"


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Top-1 accuracy and error of ``model`` (put in eval mode) on x, y."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    accuracy = correct / max(1, x.shape[0])
    return {"accuracy": accuracy, "error": 1.0 - accuracy, "samples": int(x.shape[0])}


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    loc = {id(p) for p in model.localisation_parameters()}
    rest = [p for p in model.parameters() if id(p) not in loc]
    groups = [{"params": rest, "lr": cfg.lr}]
    if loc:
        groups.append({"params": list(model.localisation_parameters()),
                       "lr": cfg.lr * cfg.loc_lr_scale})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _figure(model: nn.Module, x: Tensor, path: Path, title: str) -> Path | None:
    if not hasattr(model, "localisation_parameters") or not model.localisation_parameters():
        return None
    idx = torch.linspace(0, x.shape[0] - 1, 12).round().long()
    model.eval()
    with torch.no_grad():
        logits, aux = model(x[idx], return_aux=True)
    labels = [str(int(c)) for c in logits.argmax(1)]
    return save_rectification_figure(x[idx], aux["warped"], path, title, labels=labels)


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on the fixed test split, write the checkpoint and figure to out_dir."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    x_test, y_test = load_split(cfg.data, cfg.distortion, "test")
    shape = tuple(x_test.shape[1:])
    kwargs = cfg.model_kwargs(shape)
    model = build_model(cfg.arch, **kwargs)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    train_error = math.nan
    for epoch in range(cfg.epochs):
        x, y = load_split(cfg.data, cfg.distortion, "train", seed=cfg.seed, epoch=epoch,
                          limit=cfg.limit)
        order = torch.randperm(x.shape[0], generator=shuffle)
        model.train()
        wrong, seen = 0, 0
        batches = range(0, x.shape[0], cfg.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for i in bar:
            idx = order[i : i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            wrong += int((out.argmax(1) != yb).sum())
            seen += int(yb.shape[0])
            bar.set_postfix(loss=f"{loss.item():.3f}", err=f"{wrong / seen:.3f}")
        sched.step()
        train_error = wrong / max(1, seen)
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train error {train_error:.4f}")
    seconds = time.perf_counter() - start
    metrics = evaluate(model, x_test, y_test)
    out = Path(out_dir)
    record = {
        "arch": cfg.arch,
        "kwargs": kwargs,
        "transform": cfg.transform,
        "dataset": cfg.data,
        "distortion": cfg.distortion,
        "seed": cfg.seed,
        "training": {**asdict(cfg), "optimizer": "adam", "schedule": "cosine",
                     "train_seconds": round(seconds, 1), "threads_used": torch.get_num_threads(),
                     "command": cfg.command(str(out))},
        "metrics": {"test_error": round(metrics["error"], 6),
                    "test_accuracy": round(metrics["accuracy"], 6),
                    "test_samples": metrics["samples"],
                    "final_train_error": round(train_error, 6)},
    }
    save_checkpoint(model, out, record)
    title = f"{out.name}: test error {100 * metrics['error']:.2f}% ({cfg.distortion})"
    _figure(model, x_test, out / FIGURE_FILE, title)
    return record
