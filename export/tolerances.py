"""The numeric tolerances every parity check uses: one named constant per precision, here only.

A backend output ``b`` matches the PyTorch reference ``r`` when ``|b - r| <= atol + rtol * |r|``
holds for every element, and the top-1 class agrees on at least ``min_top1`` of the samples.
fp32 is what the issue fixes (logits within 1e-4, every prediction the same). fp16 rounds
every activation to 11 significant bits, so its bound is relative and a handful of samples whose
two best logits lie within the rounding noise may flip.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tolerance", "FP32", "FP16", "TOLERANCES", "for_precision"]


@dataclass(frozen=True)
class Tolerance:
    """Element-wise bound ``atol + rtol * |ref|`` and the minimum top-1 agreement (0..1)."""

    name: str
    atol: float
    rtol: float
    min_top1: float

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0:
            raise ValueError(f"tolerance {self.name}: atol/rtol must be >= 0, e.g. atol=1e-4")
        if not 0.0 <= self.min_top1 <= 1.0:
            raise ValueError(f"tolerance {self.name}: min_top1 must lie in [0, 1], e.g. 1.0")

    def describe(self) -> str:
        return (
            f"{self.name}: |err| <= {self.atol:g} + {self.rtol:g}*|ref|, "
            f"top-1 >= {self.min_top1:.2%}"
        )


FP32 = Tolerance("fp32", atol=1e-4, rtol=0.0, min_top1=1.0)
FP16 = Tolerance("fp16", atol=2e-2, rtol=2e-2, min_top1=0.99)

TOLERANCES: dict[str, Tolerance] = {"fp32": FP32, "fp16": FP16}


def for_precision(precision: str) -> Tolerance:
    """The tolerance for ``precision`` ('fp32' or 'fp16')."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(
            f"no tolerance for precision {precision!r}; choose one of {sorted(TOLERANCES)}"
        ) from None
