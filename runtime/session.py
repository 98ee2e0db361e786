"""The one inference interface every backend implements: open, infer(dict) -> dict, close.

The base class validates names, shapes and dtypes once (so each backend only does its own
work) and turns every failure into a :class:`SessionError` that says what was expected.
A dimension given as ``None`` or a string in a :class:`TensorSpec` is dynamic.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stn_deploy.errors import StnDeployError

__all__ = [
    "SessionError",
    "InputError",
    "BackendUnavailableError",
    "TensorSpec",
    "Session",
    "non_finite_message",
]


class SessionError(StnDeployError):
    """An inference session could not be opened or could not run."""


class InputError(SessionError, ValueError):
    """A request's tensors do not match the model: wrong name, shape, dtype or values."""


class BackendUnavailableError(SessionError):
    """The backend's library (tensorrt, onnxruntime, a GPU) is not present on this machine."""


Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None or a string for a dynamic dimension) and numpy dtype of one tensor."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        np.dtype(self.dtype)  # raises TypeError for a dtype numpy does not know
        for d in self.shape:
            if isinstance(d, int) and d < 0:
                raise ValueError(f"{self.name}: dimension {d} < 0; use None for a dynamic one")

    def describe(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"

    def check(self, array: Any) -> np.ndarray:
        """Return ``array`` as a C-contiguous ndarray or raise InputError naming expected vs got."""
        if not isinstance(array, np.ndarray):
            raise InputError(
                f"input {self.name!r} must be a numpy array, got {type(array).__name__}"
            )
        if array.dtype != np.dtype(self.dtype):
            raise InputError(
                f"input {self.name!r} has dtype {array.dtype}, expected {self.dtype} "
                f"(convert with array.astype(np.{self.dtype}))"
            )
        if array.ndim != len(self.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(self.shape, array.shape)
        ):
            raise InputError(
                f"input {self.name!r} has shape {list(array.shape)}, expected {self.describe()}"
            )
        return np.ascontiguousarray(array)


def non_finite_message(name: str, array: np.ndarray) -> str | None:
    """None when every value of a float ``array`` is finite, else what a client should be told."""
    if array.dtype.kind != "f":
        return None
    # A finite sum proves every value finite (NaN and Inf propagate) at under half the cost of
    # isfinite().all(); only a sum that overflows or is NaN needs the element-wise look.
    if math.isfinite(np.add.reduce(array, axis=None)):
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    first = int(np.flatnonzero(bad)[0])
    return (
        f"input {name!r} contains {int(bad.sum())} NaN/Inf values (first at flat index {first}); "
        "expected finite numbers"
    )


class Session(abc.ABC):
    """Base of every backend session. Subclasses implement ``_open``, ``_infer``, ``_close``.

    Use as a context manager, or call ``open()`` / ``close()``. ``infer`` takes and returns
    dicts of numpy arrays keyed by tensor name; the batch is the first dimension.
    """

    backend: str = ""
    # May ``infer`` be called from any thread (one call at a time)? The batcher then runs a lone
    # request on the caller's thread instead of handing it to its worker. Off unless a backend
    # is known to allow it (a CUDA context or stream may belong to the thread that made it).
    any_thread: bool = False

    def __init__(self) -> None:
        self._opened = False
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> Session:
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference ---------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch. Raises InputError for bad feeds, SessionError if the backend fails."""
        if not self._opened:
            self.open()
        checked = self.check_feeds(feeds)
        return self._infer(checked)

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, shapes, dtypes and a shared batch size; return contiguous arrays."""
        expected = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        missing = sorted(set(expected) - set(feeds))
        if unknown or missing:
            want = ", ".join(s.describe() for s in self.inputs)
            raise InputError(
                f"inputs do not match the model: unknown {unknown}, missing {missing}; "
                f"expected {want}"
            )
        checked = {name: expected[name].check(feeds[name]) for name in expected}
        batches = {a.shape[0] for a in checked.values() if a.ndim}
        if len(batches) > 1:
            raise InputError(f"inputs disagree on the batch size: {sorted(batches)}")
        if batches and 0 in batches:
            raise InputError("batch size 0: send at least one sample")
        return checked

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"{type(self).__name__}({ins} -> {outs})"

    # -- backend hooks -----------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None:
        """Load the model; fill ``self.inputs`` and ``self.outputs``."""

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds; return every output by name."""

    def _close(self) -> None:
        """Release backend resources (default: nothing to release)."""
