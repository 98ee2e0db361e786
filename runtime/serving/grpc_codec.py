"""KServe v2 gRPC messages <-> numpy: ModelInfer decoding and encoding, no I/O.

The messages are the generated protobuf modules that ship with ``tritonclient[grpc]``
(``tritonclient.grpc.service_pb2``), the same ones Triton's and KServe's clients use. Inputs come
as typed ``contents`` (``fp32_contents``, ...) or as ``raw_input_contents`` (little-endian bytes,
one entry per input, what tritonclient sends); outputs always go back as
``raw_output_contents``, as Triton answers. The checks are the HTTP codec's
(:mod:`.protocol`), so both protocols reject the same requests with the same messages; each
rejection is a :class:`~.protocol.ProtocolError`, whose HTTP status maps to a gRPC code here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from stn_deploy.runtime.serving import classification
from stn_deploy.runtime.serving.protocol import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    check_input,
    datatype_of,
    finish_request,
    json_array,
    requested_output,
)
from stn_deploy.runtime.serving.protocol_response import classified
from stn_deploy.runtime.session import TensorSpec

__all__ = ["decode_model_infer", "encode_model_infer", "grpc_code", "CONTENTS_FIELD"]

# KServe v2 datatype -> the InferTensorContents field that carries it (FP16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code for a failure the HTTP side answers with ``http_status``."""
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL)


def _raw_array(
    raw: bytes, dtype: np.dtype, shape: tuple[int, ...], name: str, datatype: str
) -> np.ndarray:
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise ProtocolError(
            f"input {name!r}: raw_input_contents holds {len(raw)} bytes, but shape "
            f"{list(shape)} of {datatype} needs {need}"
        )
    array = np.frombuffer(raw, dtype.newbyteorder("<"))
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def _typed_array(
    contents, dtype: np.dtype, shape: tuple[int, ...], name: str, datatype: str
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    present = [f.name for f, _ in contents.ListFields()]
    if field is None:
        raise ProtocolError(
            f"input {name!r} is {datatype}, which has no typed contents field; send it as "
            "raw_input_contents (little-endian bytes)"
        )
    if present != [field]:
        got = ", ".join(f"contents.{p}" for p in present) or "no contents"
        raise ProtocolError(
            f"input {name!r} is {datatype} and carries {got}; expected contents.{field} or "
            "raw_input_contents"
        )
    return json_array(list(getattr(contents, field)), dtype, shape, name)


def _class_count(params: Mapping, name: str) -> int:
    if "classification" not in params:
        return 0
    param = params["classification"]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise ProtocolError(
            f"output {name!r}: parameter 'classification' must be an int64_param, got {kind}; "
            "e.g. InferRequestedOutput(name, class_count=3)"
        )
    return getattr(param, kind)


def decode_model_infer(
    msg: service_pb2.ModelInferRequest,
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str],
    *,
    max_batch_size: int | None = None,
    check_finite: bool = True,
) -> InferRequest:
    """A ModelInferRequest (model name already checked) as a validated request."""
    spec_by_name = {s.name: s for s in inputs}
    raw = msg.raw_input_contents
    if not msg.inputs:
        raise ProtocolError("expected at least one input; the request has none")
    if raw and len(raw) != len(msg.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; send one "
            "per input, in the inputs' order (or typed contents for all)"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        name, datatype = tensor.name, tensor.datatype
        spec, shape = check_input(name, datatype, list(tensor.shape), spec_by_name)
        if name in arrays:
            raise ProtocolError(f"input {name!r} appears twice")
        dtype = np.dtype(spec.dtype)
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise ProtocolError(
                    f"input {name!r} has both typed contents and raw_input_contents; send its "
                    "values one way"
                )
            arrays[name] = _raw_array(raw[i], dtype, shape, name, datatype)
        else:
            arrays[name] = _typed_array(tensor.contents, dtype, shape, name, datatype)
    wanted = tuple(
        requested_output(o.name, True, _class_count(o.parameters, o.name), output_names)
        for o in msg.outputs
    ) or tuple(RequestedOutput(n, True) for n in output_names)
    names = [o.name for o in wanted]
    if len(set(names)) != len(names):
        raise ProtocolError(f"output(s) requested more than once: {names}; ask for each once")
    return finish_request(
        msg.id or None,
        arrays,
        wanted,
        inputs,
        max_batch_size=max_batch_size,
        check_finite=check_finite,
    )


def encode_model_infer(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
) -> service_pb2.ModelInferResponse:
    """The ModelInferResponse for the requested outputs, as raw_output_contents."""
    arrays = [outputs[want.name] for want in request.outputs]
    if any(want.class_count for want in request.outputs):
        arrays = classified(request.outputs, arrays)
    response = service_pb2.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for want, array in zip(request.outputs, arrays):
        if array.dtype == object:  # BYTES: a classification's "score:index" strings
            datatype, raw = "BYTES", classification.bytes_tensor(array)
        else:
            datatype = datatype_of(array.dtype)
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        response.outputs.add(name=want.name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)
    return response
