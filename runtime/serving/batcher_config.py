"""The dynamic batcher's settings, the errors it raises and the observer it reports to.

What callers of :mod:`stn_deploy.runtime.serving.batcher` configure and catch; the HTTP layer
maps each error to its status code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stn_deploy.runtime.session import SessionError

__all__ = [
    "BatcherConfig",
    "BatcherError",
    "BatcherClosedError",
    "QueueFullError",
    "RequestTooLargeError",
    "DeadlineExceededError",
    "BatchObserver",
]


class BatcherError(SessionError):
    """The batcher refused or dropped a request (not the model's fault)."""


class BatcherClosedError(BatcherError):
    """The batcher is shutting down and accepts no new requests."""


class QueueFullError(BatcherError):
    """The bounded queue has no room; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(BatcherError):
    """A single request holds more samples than the whole queue may."""


class DeadlineExceededError(BatcherError):
    """The request's deadline passed before it could run."""


@dataclass(frozen=True)
class BatcherConfig:
    """How requests are coalesced. ``max_queue`` counts samples waiting, not requests."""

    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    # Send a partial batch at once when no request is on its way in (see ``incoming``): the
    # delay only pays when someone else is about to join the batch.
    dispatch_when_idle: bool = False
    # Fail requests holding NaN/Inf with InputError, checked once per batch in the worker (off
    # the caller's thread); the rest of the batch runs.
    reject_non_finite: bool = False
    # Run a request on the caller's own thread when the batcher is idle (nothing queued, no
    # batch running, nobody else on the way in) and the session allows any thread
    # (``Session.any_thread``): a lone request skips the two thread wake-ups of a hand-off.
    run_inline_when_idle: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {self.max_batch!r}; e.g. 64")
        if not self.max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms!r}; e.g. 2.0")
        if not isinstance(self.max_queue, int) or self.max_queue < self.max_batch:
            raise ValueError(
                f"max_queue ({self.max_queue!r}) must be an int >= max_batch "
                f"({self.max_batch}); e.g. max_batch=64 with max_queue=1024"
            )


class BatchObserver(Protocol):
    """Receives one call per batch run (the metrics module implements it).

    ``infer_seconds`` is the whole run; ``phases`` splits it into preparing the inputs
    (concatenating, the NaN/Inf check), the backend call, and splitting the outputs per request
    (Triton's compute_input, compute_infer and compute_output).
    """

    def on_batch(
        self,
        size: int,
        queue_seconds: list[float],
        infer_seconds: float,
        failed: bool,
        phases: tuple[float, float, float],
    ) -> None: ...
