"""The KServe v2 gRPC face of one served model (``GRPCInferenceService``), beside HTTP.

It runs on the HTTP server's own event loop (grpc.aio) and shares its :class:`~.service.
ModelService`: one batcher for both protocols, the same validation, the same metrics and
statistics. RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer
(typed contents or raw_input_contents in, raw_output_contents out), ModelConfig and
ModelStatistics (Triton's extensions, as over HTTP); the others (streaming, repository, shared
memory, trace, log settings) answer UNIMPLEMENTED. A failure is a gRPC status carrying the
message HTTP would send. Also the standard ``grpc.health.v1.Health`` service: SERVING for ""
and for the model's name while the batcher accepts work, NOT_SERVING from shutdown on.

Needs the ``grpc`` extra: ``pip install 'stn-deploy[grpc]'`` (grpcio, grpcio-health-checking,
and tritonclient[grpc] for the generated protobuf modules).
"""

from __future__ import annotations

import asyncio
import logging
import time

from stn_deploy.runtime.serving.protocol import ProtocolError
from stn_deploy.runtime.serving.service import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    ModelService,
    failure_of,
)
from stn_deploy.runtime.session import BackendUnavailableError, SessionError

try:
    import grpc
    from google.protobuf import json_format
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2 as pb2
    from tritonclient.grpc import service_pb2_grpc as pb2_grpc

    from stn_deploy.runtime.serving import grpc_codec as codec
except ImportError as _missing:
    raise BackendUnavailableError(
        f"--grpc-port needs grpcio, grpcio-health-checking and tritonclient[grpc] "
        f"({_missing.name} is missing): pip install 'stn-deploy[grpc]'"
    ) from None

__all__ = ["start_grpc_server", "GrpcServer", "InferenceServicer"]

log = logging.getLogger("stn_deploy.runtime.server")


class _Health(health.aio.HealthServicer):
    """grpcio-health-checking's servicer, whose Watch streams end at shutdown once they have
    said NOT_SERVING: otherwise every open watch would hold a graceful stop for its whole grace
    period (a watch never finishes by itself)."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = asyncio.Event()

    async def Watch(self, request, context) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            watch.cancel()  # returning ends the stream with OK; a cancelled handler would not
        if watch.done() and not watch.cancelled() and watch.exception() is not None:
            raise watch.exception()

    async def shut(self, names: list[str]) -> None:
        for name in names:
            await self.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(0.1)  # each watch wakes and writes NOT_SERVING
        self._closing.set()


class GrpcServer:
    """A started gRPC server: its port, and a graceful stop."""

    def __init__(self, server, port: int, health_servicer: _Health, names: list[str]) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._names = names

    async def stop(self, grace_s: float | None) -> None:
        """NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace_s``."""
        await self._health.shut(self._names)
        await self.server.stop(grace_s)


_SERVICE = "inference.GRPCInferenceService"


class _Malformed:
    """A request body that did not parse as its protobuf message."""

    def __init__(self, message_type: str, error: Exception) -> None:
        self.text = (
            f"the request is not a valid {message_type} protobuf message ({error}); send it "
            "with a KServe v2 / Triton gRPC client, e.g. tritonclient.grpc"
        )


def _lenient(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, or what a hostile body provokes
            return _Malformed(message_class.__name__, exc)

    return parse


def _guarded(handler):
    async def call(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.text)
        return await handler(request, context)

    return call


def _serialize(response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _method_handlers(servicer) -> dict:
    """The RPCs of GRPCInferenceService the servicer defines, from the service's descriptor, as the
    generated add_..._to_server registers them, except that a body that is no valid protobuf
    gets INVALID_ARGUMENT saying so (grpc's own deserializer answers INTERNAL) and a handler may
    return pre-serialized bytes. The RPCs the servicer does not define (ModelStreamInfer, the
    repository, shared memory, trace and log ones) are left out: grpc answers UNIMPLEMENTED."""
    handlers = {}
    for method in pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        if method.name not in type(servicer).__dict__:  # not served here: UNIMPLEMENTED
            continue
        request_class = getattr(pb2, method.input_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name)),
            request_deserializer=_lenient(request_class),
            response_serializer=_serialize,
        )
    return handlers


async def start_grpc_server(service: ModelService) -> GrpcServer:
    """Start serving ``service`` over gRPC on ``service.config`` host:grpc_port (0: any)."""
    config = service.config
    limit = config.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),  # --workers: every worker listens on the one port
        ]
    )
    servicer = InferenceServicer(service)
    server.add_registered_method_handlers(_SERVICE, _method_handlers(servicer))
    health_servicer = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        port = server.add_insecure_port(f"{host}:{config.grpc_port}")
    except RuntimeError as exc:
        raise SessionError(
            f"cannot listen for gRPC on {config.host}:{config.grpc_port} ({exc}); choose "
            "another --grpc-port or stop what uses it"
        ) from None
    await server.start()
    names = ["", service.model.name]
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving gRPC", extra={"model": service.model.name, "grpc_port": port})
    return GrpcServer(server, port, health_servicer, names)


class InferenceServicer(pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over one ModelService (the RPCs this module's docstring lists)."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.model = service.model
        specs = service.metadata
        self.metadata = pb2.ModelMetadataResponse(
            name=specs["name"],
            versions=specs["versions"],
            platform=specs["platform"],
            inputs=[pb2.ModelMetadataResponse.TensorMetadata(**t) for t in specs["inputs"]],
            outputs=[pb2.ModelMetadataResponse.TensorMetadata(**t) for t in specs["outputs"]],
        )

    async def _refuse(self, context, status: int, message: str) -> None:
        await context.abort(codec.grpc_code(status), message)

    async def ServerLive(self, request, context):
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb2.ServerReadyResponse(ready=self.service.batcher.accepting)

    async def ModelReady(self, request, context):
        known = self.service.unknown(request.name, request.version or None) is None
        return pb2.ModelReadyResponse(ready=known and self.service.batcher.accepting)

    async def ServerMetadata(self, request, context):
        return pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):
        message = self.service.unknown(request.name, request.version or None)
        if message is not None:
            await self._refuse(context, 404, message)
        return self.metadata

    async def ModelConfig(self, request, context):
        message = self.service.unknown(request.name, request.version or None)
        if message is not None:
            await self._refuse(context, 404, message)
        try:
            config = self.service.model_config()
        except SessionError as exc:
            await self._refuse(context, 400, f"no Triton model configuration: {exc}")
        return json_format.ParseDict({"config": config}, pb2.ModelConfigResponse())

    async def ModelStatistics(self, request, context):
        if request.name:
            message = self.service.unknown(request.name, request.version or None)
            if message is not None:
                await self._refuse(context, 404, message)
        doc = {"model_stats": [self.service.statistics()]}
        return json_format.ParseDict(doc, pb2.ModelStatisticsResponse())

    async def ModelInfer(self, request, context):
        start = time.perf_counter()
        service = self.service
        with service.request():
            try:
                response = await self._infer(request, context)
            except Exception as exc:
                unknown = isinstance(exc, ProtocolError) and exc.status == 404
                failure = failure_of(exc)
                if failure is None:
                    raise
                kind = "unknown_model" if unknown else failure.kind
                service.finished(failure.status, start, kind)
                log.info(
                    "request failed",
                    extra={"status": failure.status, "kind": kind, "protocol": "grpc",
                           "client": context.peer(), "error": failure.message[:300]},
                )  # fmt: skip
                await self._refuse(context, failure.status, failure.message)
        service.finished(200, start, None)
        return response

    async def _infer(self, request, context):
        service = self.service
        message = service.unknown(request.model_name, request.model_version or None)
        if message is not None:
            raise ProtocolError(message, 404)
        with service.batcher.incoming():
            req = codec.decode_model_infer(
                request,
                self.model.session.inputs,
                self.model.session.output_names,
                max_batch_size=service.config.max_request_batch,
                check_finite=False,  # the batcher checks once per batch (as over HTTP)
            )
            pending = service.submit(req, context.time_remaining())
        outputs = await pending
        return codec.encode_model_infer(self.model.name, self.model.version, req, outputs)
