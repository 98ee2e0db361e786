"""The HTTP face of one served model: KServe v2 routes over starlette + uvicorn, nothing more.

Each ``/infer`` goes decode (protocol) -> batcher -> session -> encode (protocol); this module
only maps outcomes to status codes, counts them and logs them. Graceful shutdown is uvicorn's
(stop accepting, finish in-flight requests) followed by the batcher draining its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stn_deploy import __version__
from stn_deploy.runtime.serving.batcher import DynamicBatcher
from stn_deploy.runtime.serving.batcher_config import (
    BatcherClosedError,
    BatcherConfig,
    DeadlineExceededError,
    QueueFullError,
    RequestTooLargeError,
)
from stn_deploy.runtime.serving.metrics import ServerMetrics
from stn_deploy.runtime.serving.protocol import HEADER_LENGTH, ProtocolError, RequestDecoder
from stn_deploy.runtime.serving.protocol_response import (
    encode_infer_response,
    error_body,
    model_metadata,
)
from stn_deploy.runtime.serving.slow_clients import (
    BodyDeadlines,
    BodyTimeoutError,
)
from stn_deploy.runtime.serving.triton_repo import model_config_json
from stn_deploy.runtime.serving.triton_stats import model_statistics
from stn_deploy.runtime.session import InputError, Session, SessionError

__all__ = ["ServerConfig", "ServedModel", "create_app"]  # running it: runtime.uvicorn_runner

log = logging.getLogger("stn_deploy.runtime.server")

_PLATFORMS = {"ort": "onnxruntime_onnx", "trt": "tensorrt_plan", "torch": "pytorch_libtorch"}


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how to batch; limits that keep one client from hurting the rest."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_queue: int = 1024  # samples waiting; beyond it: 503 + Retry-After
    max_request_batch: int = 256  # samples in one request; beyond it: 413
    max_body_bytes: int = 64 * 1024 * 1024  # beyond it: 413
    request_timeout_s: float = 30.0  # a request still queued after this: 503
    body_timeout_s: float = 60.0  # a body not all received this long after its headers: 408
    header_timeout_s: float = 30.0  # no complete request headers this long: 408 / closed
    graceful_timeout_s: float = 30.0
    switch_interval_ms: float = 0.5  # GIL switch interval run_server sets (Python default: 5)
    # A lone request runs on the event loop's thread (sessions that allow it): no hand-off.
    inline_when_idle: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port!r}; e.g. 8000 (0: any free)")
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
        self.platform = self.platform or _PLATFORMS.get(self.session.backend, self.session.backend)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type="application/json")


class _Endpoints:
    """Route handlers bound to one model, its batcher and its metrics."""

    def __init__(self, model: ServedModel, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics
        self.active = 0  # /infer requests between arrival and their response being sent
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
        self.body_deadlines = BodyDeadlines(config.body_timeout_s)
        self.metadata = model_metadata(
            model.name,
            model.session.inputs,
            model.session.outputs,
            model.platform,
            [model.version],
        )

    # -- health and metadata -------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "name": "stn-deploy",
                "version": __version__,
                "extensions": [
                    "binary_tensor_data",
                    "classification",
                    "model_configuration",
                    "statistics",
                ],
            }
        )

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.batcher.accepting else 503)

    def _unknown(self, request: Request) -> Response | None:
        name = request.path_params["name"]
        version = request.path_params.get("version", self.model.version)
        if name != self.model.name or version != self.model.version:
            return _error(
                404,
                f"unknown model {name!r} version {version!r}; this server serves "
                f"{self.model.name!r} version {self.model.version!r}",
            )
        return None

    async def model_meta(self, request: Request) -> Response:
        return self._unknown(request) or JSONResponse(self.metadata)

    async def model_ready(self, request: Request) -> Response:
        return self._unknown(request) or await self.ready(request)

    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration extension: what Triton-aware clients and tools read."""
        if (unknown := self._unknown(request)) is not None:
            return unknown
        try:
            config = model_config_json(
                self.model.name,
                self.model.platform,
                # what one request may carry (the batcher splits it into max_batch batches)
                self.config.max_request_batch,
                round(self.config.max_delay_ms * 1000),
                self.model.session.inputs,
                self.model.session.outputs,
            )
        except SessionError as exc:
            return _error(400, f"no Triton model configuration for this model: {exc}")
        return JSONResponse(config)

    async def model_stats(self, request: Request) -> Response:
        """Triton's statistics extension, read back from the metrics (all workers summed)."""
        if "name" in request.path_params and (unknown := self._unknown(request)) is not None:
            return unknown
        stats = model_statistics(self.metrics, self.model.version)
        return JSONResponse({"model_stats": [stats]})

    async def metrics_page(self, request: Request) -> Response:
        body, content_type = self.metrics.render(self.batcher.queued_rows)
        return Response(body, headers={"Content-Type": content_type})

    # -- inference -----------------------------------------------------------------------------
    async def infer_asgi(self, scope, receive, send, name: str, version: str | None) -> None:
        """POST /v2/models/{name}[/versions/{version}]/infer as a plain ASGI handler."""
        start = time.perf_counter()
        self.active += 1
        try:
            status, body, headers, kind = await self._infer(scope, receive, name, version)
            raw_headers = [(b"content-length", str(len(body)).encode())]
            raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.active -= 1
        self.metrics.on_request(status, time.perf_counter() - start, kind)
        if kind is not None:
            client = scope.get("client") or ("?", 0)
            log.info(
                "request failed",
                extra={
                    "status": status,
                    "kind": kind,
                    "client": f"{client[0]}:{client[1]}",
                    "error": body.decode(errors="replace")[:300],
                },
            )

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        """The whole body; 408 when it has not all arrived within ``body_timeout_s``."""
        try:
            return await self.body_deadlines.read(self._receive_body(headers, receive))
        except BodyTimeoutError as exc:
            raise ProtocolError(str(exc), 408) from None

    async def _receive_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"body of {int(declared)} bytes exceeds the limit of {limit}", 413)
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1")
        if encoding != "identity":
            raise ProtocolError(
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed", 415
            )
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ProtocolError("client disconnected before sending the whole body", 499)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"body exceeds the limit of {limit} bytes", 413)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _infer(
        self, scope, receive, name: str, version: str | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        """(status, body, headers, error kind or None); the one place outcomes become codes."""
        if name != self.model.name or (version or self.model.version) != self.model.version:
            message = (
                f"unknown model {name!r} version {version or self.model.version!r}; this server "
                f"serves {self.model.name!r} version {self.model.version!r}"
            )
            return 404, error_body(message), _JSON, "unknown_model"
        headers = dict(scope["headers"])
        try:
            with self.batcher.incoming():
                body = await self._read_body(headers, receive)
                header_length = headers.get(_HEADER_LENGTH_KEY)
                req = self.decoder.decode(
                    body, None if header_length is None else header_length.decode("latin-1")
                )
                pending = self.batcher.submit_async(
                    req.inputs, self.config.request_timeout_s, validated=True
                )
            outputs = await pending
            payload, out_headers = encode_infer_response(
                self.model.name, req, outputs, self.model.version
            )
        except ProtocolError as exc:
            if exc.status == 408:  # the rest of that body may still come: end the connection
                return 408, error_body(str(exc)), {**_JSON, "Connection": "close"}, "timeout"
            kind = "bad_request" if exc.status == 400 else "limit"
            return exc.status, error_body(str(exc)), _JSON, kind
        except InputError as exc:
            return 400, error_body(str(exc)), _JSON, "bad_request"
        except RequestTooLargeError as exc:
            return 413, error_body(str(exc)), _JSON, "limit"
        except QueueFullError as exc:
            retry = {**_JSON, "Retry-After": str(max(1, round(exc.retry_after_s)))}
            return 503, error_body(str(exc)), retry, "queue_full"
        except (BatcherClosedError, DeadlineExceededError) as exc:
            return 503, error_body(str(exc)), {**_JSON, "Retry-After": "1"}, "unavailable"
        except SessionError as exc:
            return 500, error_body(f"inference failed: {exc}"), _JSON, "backend"
        return 200, payload, out_headers, None


_JSON = {"Content-Type": "application/json"}
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()
_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class _InferFastPath:
    """ASGI wrapper: POST .../infer goes straight to the endpoint, the rest to Starlette.

    Starlette's middleware stack, router and Request/Response objects cost about a third of the
    event loop's time per request (py-spy under bench/load_bench.py at concurrency 64), and the
    event loop is what limits a batching server on 2 cores; the hot route skips them.
    """

    def __init__(self, app: Starlette, endpoints: _Endpoints) -> None:
        self.app = app
        self.endpoints = endpoints
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.match(scope["path"])
            if match:
                name = urllib.parse.unquote(match[1])
                await self.endpoints.infer_asgi(scope, receive, send, name, match[2])
                return
        await self.app(scope, receive, send)


class _InferRoute:
    """The infer routes as a plain ASGI endpoint for Starlette's router (path params decoded)."""

    def __init__(self, endpoints: _Endpoints) -> None:
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send) -> None:
        params = scope["path_params"]
        await self.endpoints.infer_asgi(scope, receive, send, params["name"], params.get("version"))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 / 405 as the protocol's {"error": ...} documents."""
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    elif exc.status_code == 404:
        message = (
            f"no endpoint {request.method} {request.url.path}; this server has /v2, "
            "/v2/health/{live,ready}, /v2/models/NAME[/versions/V][/ready|/config|/stats|/infer],"
            " /v2/models/stats, /metrics"
        )
    else:
        message = str(exc.detail)
    return _error(exc.status_code, message, dict(exc.headers or {}))


def create_app(
    model: ServedModel, config: ServerConfig | None = None, metrics: ServerMetrics | None = None
) -> _InferFastPath:
    """The ASGI app for ``model``; its lifespan starts and drains the batcher."""
    config = config or ServerConfig()
    ep = _Endpoints(model, config, metrics or ServerMetrics(model.name))
    routes = [
        Route("/v2", ep.server_metadata),
        Route("/v2/health/live", ep.live),
        Route("/v2/health/ready", ep.ready),
        Route("/v2/models/stats", ep.model_stats),  # before {name}: every model's statistics
        Route("/v2/models/{name}", ep.model_meta),
        Route("/v2/models/{name}/ready", ep.model_ready),
        Route("/v2/models/{name}/versions/{version}", ep.model_meta),
        Route("/v2/models/{name}/versions/{version}/ready", ep.model_ready),
        Route("/v2/models/{name}/config", ep.model_config),
        Route("/v2/models/{name}/versions/{version}/config", ep.model_config),
        Route("/v2/models/{name}/stats", ep.model_stats),
        Route("/v2/models/{name}/versions/{version}/stats", ep.model_stats),
        Route("/metrics", ep.metrics_page),
        # POST never gets here (_InferFastPath takes it); other methods get a JSON 405.
        Route("/v2/models/{name}/infer", _InferRoute(ep), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", _InferRoute(ep), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        ep.batcher.start()
        log.info(
            "serving",
            extra={
                "model": model.name,
                "backend": model.session.backend,
                "max_batch": config.max_batch,
                "max_delay_ms": config.max_delay_ms,
            },
        )
        try:
            yield
        finally:
            # uvicorn has finished the in-flight requests; run anything still queued, then stop.
            ep.body_deadlines.stop()
            await asyncio.to_thread(ep.batcher.close, config.graceful_timeout_s or None)
            log.info("stopped", extra={"model": model.name})

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.endpoints = ep
    return _InferFastPath(app, ep)
