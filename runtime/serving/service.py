"""One served model behind every protocol: its batcher, metrics and documents, and what each
failure answers.

HTTP (:mod:`.http_server`) and gRPC (:mod:`.grpc_server`) decode their own wire formats into the
same :class:`~.protocol.InferRequest`, run it here through the one batcher (so requests of both
protocols share batches), and map a failure to their own status codes from the same
:class:`Failure`: the same messages whatever the protocol.
"""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

from stn_deploy import __version__
from stn_deploy.runtime.serving.batcher import DynamicBatcher
from stn_deploy.runtime.serving.batcher_config import (
    BatcherClosedError,
    DeadlineExceededError,
    QueueFullError,
    RequestTooLargeError,
)
from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.metrics import ServerMetrics
from stn_deploy.runtime.serving.protocol import InferRequest, ProtocolError, RequestDecoder
from stn_deploy.runtime.serving.protocol_response import model_metadata
from stn_deploy.runtime.serving.triton_repo import model_config_json
from stn_deploy.runtime.serving.triton_stats import model_statistics
from stn_deploy.runtime.session import InputError, SessionError

__all__ = ["ModelService", "Failure", "failure_of", "EXTENSIONS", "SERVER_NAME"]

SERVER_NAME = "stn-deploy"
SERVER_VERSION = __version__
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")


class Failure(NamedTuple):
    """A request's failure as every protocol reports it."""

    status: int  # the HTTP status; gRPC maps it to a status code (grpc_codec.GRPC_CODES)
    message: str
    kind: str  # the metrics' error kind: bad_request, limit, timeout, queue_full, ...
    retry_after_s: float | None = None  # 503: when to try again
    close: bool = False  # the rest of this HTTP request may still come: end the connection


def failure_of(exc: BaseException) -> Failure | None:
    """The answer to ``exc`` raised while decoding or running a request (None: not ours)."""
    if isinstance(exc, ProtocolError):
        if exc.status == 408:
            return Failure(408, str(exc), "timeout", close=True)
        return Failure(exc.status, str(exc), "bad_request" if exc.status == 400 else "limit")
    if isinstance(exc, InputError):
        return Failure(400, str(exc), "bad_request")
    if isinstance(exc, RequestTooLargeError):
        return Failure(413, str(exc), "limit")
    if isinstance(exc, QueueFullError):
        return Failure(503, str(exc), "queue_full", max(1.0, exc.retry_after_s))
    if isinstance(exc, (BatcherClosedError, DeadlineExceededError)):
        return Failure(503, str(exc), "unavailable", 1.0)
    if isinstance(exc, SessionError):
        return Failure(500, f"inference failed: {exc}", "backend")
    return None


class ModelService:
    """The model, its batcher and metrics, shared by the protocols of one server process."""

    def __init__(self, model: ServedModel, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics
        self.active = 0  # inference requests between arrival and their response being sent
        self.batcher = DynamicBatcher(
            model.session,
            config.batcher_config(),
            observer=metrics,
            others_active=lambda: self.active > 1,
        )
        metrics.queued_samples = lambda: self.batcher.queued_rows
        self.decoder = RequestDecoder(
            model.session.inputs,
            model.session.output_names,
            max_batch_size=config.max_request_batch,
            # NaN/Inf: checked once per batch by the batcher's worker. numpy releases the GIL
            # for that check, and on the event loop each release costs a wait for the GIL
            # (measured in-process at concurrency 64: 28 µs per request; bench/profile_server.py).
            check_finite=False,
        )
        self.spec_by_name = {s.name: s for s in model.session.inputs}
        self.metadata = model_metadata(
            model.name,
            model.session.inputs,
            model.session.outputs,
            model.platform,
            [model.version],
        )

    def unknown(self, name: str, version: str | None) -> str | None:
        """The error message when (name, version) is not this server's model, else None."""
        version = version or self.model.version
        if name == self.model.name and version == self.model.version:
            return None
        return (
            f"unknown model {name!r:.80} version {version!r:.40}; this server serves "
            f"{self.model.name!r} version {self.model.version!r}"
        )

    def model_config(self) -> dict:
        """Triton's ModelConfig as JSON; SessionError when the model has no Triton types."""
        return model_config_json(
            self.model.name,
            self.model.platform,
            # what one request may carry (the batcher splits it into max_batch batches)
            self.config.max_request_batch,
            round(self.config.max_delay_ms * 1000),
            self.model.session.inputs,
            self.model.session.outputs,
        )

    def statistics(self) -> dict:
        """Triton's ``$model_stat`` object, read back from the metrics (all workers summed)."""
        return model_statistics(self.metrics, self.model.version)

    @contextlib.contextmanager
    def request(self):
        """Around one inference request from arrival to sent response (lone ones run inline)."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def submit(self, request: InferRequest, timeout_s: float | None = None):
        """Queue a decoded request; an awaitable of its outputs (call from the event loop)."""
        timeout = self.config.request_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, max(0.0, timeout_s))
        return self.batcher.submit_async(request.inputs, timeout, validated=True)

    def finished(self, status: int, started: float, kind: str | None) -> None:
        self.metrics.on_request(status, time.perf_counter() - started, kind)

