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

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stn_deploy.runtime.serving.config import ServedModel, ServerConfig
from stn_deploy.runtime.serving.metrics import ServerMetrics
from stn_deploy.runtime.serving.protocol import HEADER_LENGTH, ProtocolError
from stn_deploy.runtime.serving.protocol_response import encode_infer_response, error_body
from stn_deploy.runtime.serving.service import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    ModelService,
    failure_of,
)
from stn_deploy.runtime.serving.slow_clients import BodyDeadlines, BodyTimeoutError
from stn_deploy.runtime.session import SessionError

__all__ = ["create_app"]  # its settings: runtime.serving.config; running it: uvicorn_runner

log = logging.getLogger("stn_deploy.runtime.server")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type="application/json")


class _Endpoints:
    """Route handlers bound to one model service (its batcher and metrics)."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.model = service.model
        self.config = service.config
        self.metrics = service.metrics
        self.batcher = service.batcher
        self.decoder = service.decoder
        self.body_deadlines = BodyDeadlines(service.config.body_timeout_s)

    # -- health and metadata -------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.batcher.accepting else 503)

    def _unknown(self, request: Request) -> Response | None:
        message = self.service.unknown(
            request.path_params["name"], request.path_params.get("version")
        )
        return None if message is None else _error(404, message)

    async def model_meta(self, request: Request) -> Response:
        return self._unknown(request) or JSONResponse(self.service.metadata)

    async def model_ready(self, request: Request) -> Response:
        return self._unknown(request) or await self.ready(request)

    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration extension: what Triton-aware clients and tools read."""
        if (unknown := self._unknown(request)) is not None:
            return unknown
        try:
            config = self.service.model_config()
        except SessionError as exc:
            return _error(400, f"no Triton model configuration for this model: {exc}")
        return JSONResponse(config)

    async def model_stats(self, request: Request) -> Response:
        """Triton's statistics extension, read back from the metrics (all workers summed)."""
        if "name" in request.path_params and (unknown := self._unknown(request)) is not None:
            return unknown
        return JSONResponse({"model_stats": [self.service.statistics()]})

    async def metrics_page(self, request: Request) -> Response:
        body, content_type = self.metrics.render(self.batcher.queued_rows)
        return Response(body, headers={"Content-Type": content_type})

    # -- inference -----------------------------------------------------------------------------
    async def infer_asgi(self, scope, receive, send, name: str, version: str | None) -> None:
        """POST /v2/models/{name}[/versions/{version}]/infer as a plain ASGI handler."""
        start = time.perf_counter()
        with self.service.request():
            status, body, headers, kind = await self._infer(scope, receive, name, version)
            raw_headers = [(b"content-length", str(len(body)).encode())]
            raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            await send({"type": "http.response.start", "status": status, "headers": raw_headers})
            await send({"type": "http.response.body", "body": body})
        self.service.finished(status, start, kind)
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
        message = self.service.unknown(name, version)
        if message is not None:
            return 404, error_body(message), _JSON, "unknown_model"
        headers = dict(scope["headers"])
        try:
            with self.batcher.incoming():
                body = await self._read_body(headers, receive)
                header_length = headers.get(_HEADER_LENGTH_KEY)
                req = self.decoder.decode(
                    body, None if header_length is None else header_length.decode("latin-1")
                )
                pending = self.service.submit(req)
            outputs = await pending
            payload, out_headers = encode_infer_response(
                self.model.name, req, outputs, self.model.version
            )
        except Exception as exc:
            failure = failure_of(exc)
            if failure is None:
                raise
            out = dict(_JSON)
            if failure.retry_after_s is not None:
                out["Retry-After"] = str(round(failure.retry_after_s))
            if failure.close:
                out["Connection"] = "close"
            return failure.status, error_body(failure.message), out, failure.kind
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
    """The ASGI app for ``model``; its lifespan starts and drains the batcher, and runs the
    KServe v2 gRPC server beside it on the same event loop when ``config.grpc_port`` is set."""
    config = config or ServerConfig()
    service = ModelService(model, config, metrics or ServerMetrics(model.name))
    ep = _Endpoints(service)
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
        service.batcher.start()
        grpc_server = None
        if config.grpc_port is not None:
            from stn_deploy.runtime.serving.grpc_server import start_grpc_server

            grpc_server = await start_grpc_server(service)
            app.state.grpc_port = grpc_server.port
        log.info(
            "serving",
            extra={
                "model": model.name,
                "backend": model.session.backend,
                "max_batch": config.max_batch,
                "max_delay_ms": config.max_delay_ms,
                "grpc_port": app.state.grpc_port,
            },
        )
        try:
            yield
        finally:
            # uvicorn has finished the in-flight HTTP requests; gRPC finishes its own, then
            # the batcher runs anything still queued and stops.
            ep.body_deadlines.stop()
            if grpc_server is not None:
                await grpc_server.stop(config.graceful_timeout_s)
            await asyncio.to_thread(service.batcher.close, config.graceful_timeout_s or None)
            log.info("stopped", extra={"model": model.name})

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.endpoints = ep
    app.state.service = service
    app.state.grpc_port = None
    return _InferFastPath(app, ep)
