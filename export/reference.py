"""PyTorch's answers for verify: the float64 ground truth and PyTorch's own float32 run.

float32 is not exact: a large STN's float32 output can sit 2e-4 away from the same model in
float64, so verify judges every backend (and PyTorch float32 itself) against float64. Modules
that fix a dtype inside forward (``torch.zeros(...).float()``, ``x.to(torch.float32)``, a
float32 constant) run in float64 under :class:`PromoteFloat32`, which turns those requests into
float64 ones; a module that still cannot run in float64 is reported, and verify falls back to
the fixed float32 tolerance.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["PromoteFloat32", "Reference", "torch_outputs", "reference_outputs"]


class PromoteFloat32(TorchFunctionMode):
    """Inside forward, a float32 request (``.float()``, ``dtype=torch.float32``) gets float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float and args and args[0].is_floating_point():
            return args[0].double()
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        if func in (torch.Tensor.to, torch.Tensor.type):
            args = tuple(torch.float64 if a is torch.float32 else
                         "torch.DoubleTensor" if a == "torch.FloatTensor" else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def torch_outputs(model: nn.Module, x: np.ndarray, names: Sequence[str], batch_size: int,
                  dtype: torch.dtype = torch.float32, promote: bool = False
                  ) -> dict[str, np.ndarray]:
    """``model``'s outputs (logits, then the requested extras) over ``x``, run in ``dtype``."""
    from stn_deploy.export.onnx_export import _ExportWrapper

    extras = [n for n in names if n != "logits"]
    wrapper = _ExportWrapper(model.to(dtype).eval(), extras).eval()
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in ("logits", *extras)}
    promotion = PromoteFloat32() if promote else contextlib.nullcontext()
    with torch.inference_mode(), _default_dtype(dtype), promotion:
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))
            out = wrapper(batch.to(dtype))
            out = out if isinstance(out, tuple) else (out,)
            for name, value in zip(chunks, out):
                chunks[name].append(value.detach().to(torch.float64).numpy())
    return {n: np.concatenate(v) for n, v in chunks.items()}


@dataclass(frozen=True)
class Reference:
    """Ground truth for one verification: float64 (or float32 when float64 failed), and fp32."""

    truth: dict[str, np.ndarray]
    float32: dict[str, np.ndarray]
    dtype: str  # "float64" or "float32"
    note: str = ""  # why float64 was not available, or how it was obtained


def reference_outputs(model: nn.Module, x: np.ndarray, names: Sequence[str],
                      batch_size: int = 256) -> Reference:
    """PyTorch float32 outputs and, when the module runs in float64, float64 ones."""
    fp32 = torch_outputs(copy.deepcopy(model), x, names, batch_size)
    failures = []
    for promote in (False, True):
        try:
            truth = torch_outputs(copy.deepcopy(model), x, names, batch_size, torch.float64,
                                  promote=promote)
        except (RuntimeError, TypeError) as exc:  # a dtype clash inside the module's forward
            failures.append(str(exc).splitlines()[0])
            continue
        note = "float32 requests in forward promoted to float64" if promote else ""
        return Reference(truth, fp32, "float64", note)
    return Reference(fp32, fp32, "float32",
                     f"the module does not run in float64 ({failures[-1]}); judged against "
                     "PyTorch float32 with the fixed tolerance")
