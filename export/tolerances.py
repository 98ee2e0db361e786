"""How verify judges a backend: one named policy per precision, here only.

Ground truth is the PyTorch module run in float64 (:mod:`stn_deploy.export.reference`). Each
output is judged by the statistic that fits it:

- class scores ([N, K], or [N, T, K] sequences): the error bound below on every element; top-1
  agreement (per position for sequences) is reported over all samples and over the samples whose
  two best reference scores are further apart than twice the bound (within the bound only such
  near-ties can change places, so it is not a separate gate);
- images ([N, C, H, W]: warped or rectified outputs): the bound on the ``image_quantile`` of the
  per-pixel errors, not the maximum (nearest sampling may legitimately move a pixel whose source
  lies within rounding of a pixel boundary), plus PSNR >= ``min_psnr`` where given;
- anything else (theta): the bound on every element.

The bound itself:

- fp32 (relative): a backend's error statistic may be at most ``multiple`` times PyTorch fp32's
  own error statistic against float64, plus ``floor``. A correct export runs the same arithmetic
  in another order, so its error is of the same size as PyTorch's; a wrong sampler setting is
  orders of magnitude away.
- fp16 (fixed): ``atol + rtol * |reference|``; fp16 rounds every activation to 11 bits, so
  the size of its error depends on the network, not on PyTorch's fp32 error.
- fixed ``atol``/``rtol`` also apply when the user passes ``--atol``/``--rtol``, and to fp32
  when the module cannot run in float64 (then against PyTorch fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Tolerance", "FP32", "FP16", "TOLERANCES", "for_precision", "with_fixed_bound"]


@dataclass(frozen=True)
class Tolerance:
    """The policy of one precision (see the module docstring for how each field is used)."""

    name: str
    atol: float
    rtol: float
    min_top1: float
    multiple: float | None = None  # relative bound: multiple x PyTorch fp32's error + floor
    floor: float = 0.0
    image_quantile: float = 0.999
    min_psnr: float | None = None  # dB, images only

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0 or self.floor < 0:
            raise ValueError(f"tolerance {self.name}: atol/rtol/floor must be >= 0, e.g. 1e-4")
        if not 0.0 <= self.min_top1 <= 1.0:
            raise ValueError(f"tolerance {self.name}: min_top1 must lie in [0, 1], e.g. 1.0")
        if self.multiple is not None and self.multiple < 1:
            raise ValueError(f"tolerance {self.name}: multiple must be >= 1, e.g. 4")
        if not 0.5 <= self.image_quantile <= 1.0:
            raise ValueError(f"tolerance {self.name}: image_quantile in [0.5, 1], e.g. 0.999")

    @property
    def relative(self) -> bool:
        return self.multiple is not None

    def describe(self) -> str:
        if self.relative:
            bound = f"|err| <= {self.multiple:g} x PyTorch fp32's error + {self.floor:g}"
        else:
            bound = f"|err| <= {self.atol:g} + {self.rtol:g}*|ref|"
        psnr = f", images PSNR >= {self.min_psnr:g} dB" if self.min_psnr else ""
        return f"{self.name}: {bound}{psnr}"


# fp32: ONNX Runtime's error was at most 1.1x PyTorch fp32's own over the realistic STNs and
# 1.23x over the shipped checkpoints and zoo kinds (bench/results/verify_zoo.json);
# tests/export/test_policy.py keeps it below half the multiple. 4 leaves room for other
# backends' summation orders; wrong sampler settings are >= 100x. The floor covers outputs
# PyTorch happens to compute exactly. min_top1 serves fixed comparisons without a PyTorch module
# (compare_logits).
FP32 = Tolerance("fp32", atol=1e-4, rtol=0.0, min_top1=1.0, multiple=4.0, floor=1e-5)
FP16 = Tolerance("fp16", atol=2e-2, rtol=2e-2, min_top1=0.99, min_psnr=30.0)

TOLERANCES: dict[str, Tolerance] = {"fp32": FP32, "fp16": FP16}


def for_precision(precision: str) -> Tolerance:
    """The tolerance for ``precision`` ('fp32' or 'fp16')."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(
            f"no tolerance for precision {precision!r}; choose one of {sorted(TOLERANCES)}"
        ) from None


def with_fixed_bound(tol: Tolerance, atol: float | None, rtol: float | None) -> Tolerance:
    """``tol`` with a user's fixed ``atol``/``rtol`` in place of its bound (None keeps it)."""
    if atol is None and rtol is None:
        return tol
    return replace(tol, name=f"{tol.name} (user bound)", multiple=None,
                   atol=tol.atol if atol is None else atol,
                   rtol=tol.rtol if rtol is None else rtol)
