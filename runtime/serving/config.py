"""What a server serves and how: the model (a name and an open Session) and the server's limits.

Shared by both protocols (HTTP: :mod:`.http_server`; gRPC: :mod:`.grpc_server`) and by the
``--workers`` processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stn_deploy.runtime.serving.batcher_config import BatcherConfig
from stn_deploy.runtime.session import Session

__all__ = ["ServerConfig", "ServedModel", "PLATFORMS"]

PLATFORMS = {"ort": "onnxruntime_onnx", "trt": "tensorrt_plan", "torch": "pytorch_libtorch"}


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how to batch; limits that keep one client from hurting the rest."""

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # KServe v2 gRPC beside HTTP (0: any free port); None: off
    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_queue: int = 1024  # samples waiting; beyond it: 503 + Retry-After
    max_request_batch: int = 256  # samples in one request; beyond it: 413
    max_body_bytes: int = 64 * 1024 * 1024  # beyond it: 413 (gRPC: the largest message)
    request_timeout_s: float = 30.0  # a request still queued after this: 503
    body_timeout_s: float = 60.0  # a body not all received this long after its headers: 408
    header_timeout_s: float = 30.0  # no complete request headers this long: 408 / closed
    graceful_timeout_s: float = 30.0
    switch_interval_ms: float = 0.5  # GIL switch interval run_server sets (Python default: 5)
    # A lone request runs on the event loop's thread (sessions that allow it): no hand-off.
    inline_when_idle: bool = True

    def __post_init__(self) -> None:
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {value!r}; e.g. 8000 (0: any free)")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port must differ from port ({self.port}); e.g. 8001")
        if self.max_request_batch < 1 or self.max_request_batch > self.max_queue:
            raise ValueError(
                f"max_request_batch ({self.max_request_batch}) must be 1..max_queue "
                f"({self.max_queue}); e.g. max_request_batch=256 with max_queue=1024"
            )
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        timeouts = (self.request_timeout_s, self.body_timeout_s, self.header_timeout_s)
        if min(timeouts) <= 0 or self.graceful_timeout_s < 0:
            raise ValueError(
                "request_timeout_s, body_timeout_s and header_timeout_s must be > 0 and "
                "graceful_timeout_s >= 0, e.g. 30"
            )
        self.batcher_config()  # validates max_batch, max_delay_ms, max_queue

    def batcher_config(self) -> BatcherConfig:
        return BatcherConfig(
            self.max_batch,
            self.max_delay_ms,
            self.max_queue,
            dispatch_when_idle=True,
            reject_non_finite=True,
            run_inline_when_idle=self.inline_when_idle,
        )


@dataclass
class ServedModel:
    """A name and an open session; the server owns neither the model logic nor its loading."""

    name: str
    session: Session
    version: str = "1"
    platform: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"model name {self.name!r} must be non-empty without '/'")
        self.platform = self.platform or PLATFORMS.get(self.session.backend, self.session.backend)
