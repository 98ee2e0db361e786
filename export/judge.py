"""Judge one model output against the reference with the statistic that fits it.

The policy (bounds per precision, which statistic for which kind of output) is documented and
defined in :mod:`stn_deploy.export.tolerances`; this module only applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stn_deploy.export.tolerances import Tolerance

__all__ = ["OutputCheck", "output_kind", "judge"]


@dataclass(frozen=True)
class OutputCheck:
    """One output's verdict with the numbers behind it."""

    name: str
    kind: str  # "classes", "sequence", "image" or "tensor"
    passed: bool
    err: float  # the judged statistic of |backend - truth| (max, or the image quantile)
    err_torch: float | None  # the same statistic for PyTorch fp32 (None: truth is fp32)
    bound: float  # what ``err`` had to stay within (for a fixed bound: at the largest |ref|)
    max_abs: float
    mean_abs: float
    top1: float | None = None  # agreement over decided samples (classes, sequences)
    top1_all: float | None = None  # over all samples
    psnr: float | None = None  # images, dB against the truth's dynamic range
    reason: str = ""

    def summary(self) -> str:
        stat = "q" if self.kind == "image" else "max"
        text = f"{self.name} ({self.kind}) {stat}|err| {self.err:.3g} <= {self.bound:.3g}"
        if self.err_torch is not None:
            text += f" (PyTorch fp32 {self.err_torch:.3g})"
        if self.top1 is not None:
            text += f", top-1 {self.top1:.2%}"
        if self.psnr is not None:
            text += f", PSNR {self.psnr:.1f} dB"
        return text + ("" if self.passed else f": FAIL, {self.reason}")


def output_kind(name: str, shape: tuple[int, ...]) -> str:
    """How an output is judged: by its name where the pipeline fixes it, else by its shape."""
    if name == "theta":
        return "tensor"
    if name == "warped" or len(shape) == 4:
        return "image"
    if len(shape) == 2 and shape[1] >= 2:
        return "classes"
    if len(shape) == 3 and shape[2] >= 2:
        return "sequence"
    return "tensor"


def _statistic(err: np.ndarray, kind: str, tol: Tolerance) -> float:
    if err.size == 0:
        return 0.0
    if kind == "image":
        return float(np.quantile(err, tol.image_quantile))
    return float(err.max())


def _top1(truth: np.ndarray, got: np.ndarray, margin: np.ndarray | float) -> tuple[float, float]:
    """(agreement over samples whose best two reference scores differ by > margin, overall)."""
    agree = truth.argmax(-1) == got.argmax(-1)
    top2 = np.sort(truth, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > margin
    overall = float(agree.mean()) if agree.size else 1.0
    return (float(agree[decided].mean()) if decided.any() else 1.0), overall


def _psnr(truth: np.ndarray, err: np.ndarray) -> float:
    peak = float(truth.max() - truth.min()) if truth.size else 1.0
    mse = float(np.mean(err ** 2)) if err.size else 0.0
    return math.inf if mse == 0 else 10.0 * math.log10((peak or 1.0) ** 2 / mse)


def judge(name: str, truth: np.ndarray, got: np.ndarray, torch32: np.ndarray | None,
          tol: Tolerance) -> OutputCheck:
    """Verdict on ``got`` against ``truth``; ``torch32`` is PyTorch fp32's own answer, or None
    when ``truth`` is itself fp32 (then the fixed bound applies)."""
    truth = np.asarray(truth, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    kind = output_kind(name, truth.shape)
    if truth.shape != got.shape:
        return OutputCheck(name, kind, False, math.inf, None, 0.0, math.inf, math.inf,
                           reason=f"shape {got.shape}, expected {truth.shape}")
    err = np.abs(got - truth)
    finite = bool(np.isfinite(got).all())
    err_torch = None
    if tol.relative and torch32 is not None:
        err_torch = _statistic(np.abs(np.asarray(torch32, np.float64) - truth), kind, tol)
        bound = tol.multiple * err_torch + tol.floor
        stat = _statistic(err, kind, tol)
        within = stat <= bound
        margin: np.ndarray | float = 2 * bound
    else:
        limit = tol.atol + tol.rtol * np.abs(truth)
        bound = float(limit.max()) if limit.size else tol.atol
        over = err - limit
        within = _statistic(over, kind, tol) <= 0 if over.size else True
        stat = _statistic(err, kind, tol)
        top = np.sort(np.abs(truth), axis=-1)[..., -1] if truth.ndim else 0.0
        margin = 2 * (tol.atol + tol.rtol * top)
    check = dict(max_abs=float(err.max()) if err.size else 0.0,
                 mean_abs=float(err.mean()) if err.size else 0.0)
    reasons = []
    if not finite:
        reasons.append("non-finite values")
        stat = check["max_abs"] = math.inf
    elif not within:
        reasons.append(f"error {stat:.3g} above the bound {bound:.3g}")
    top1 = top1_all = psnr = None
    if kind in ("classes", "sequence"):
        # reported, not gated: within an element-wise bound only near-ties can change places
        top1, top1_all = _top1(truth, got, margin)
    if kind == "image":
        psnr = _psnr(truth, err) if finite else -math.inf
        if tol.min_psnr is not None and psnr < tol.min_psnr:
            reasons.append(f"PSNR {psnr:.1f} dB below {tol.min_psnr:g} dB")
    return OutputCheck(name, kind, not reasons, stat, err_torch, bound, top1=top1,
                       top1_all=top1_all, psnr=psnr, reason="; ".join(reasons), **check)
