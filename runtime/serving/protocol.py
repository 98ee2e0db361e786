"""KServe v2 / Open Inference Protocol requests -> numpy: pure decoding and validation, no I/O.

Covers JSON tensors and Triton's binary tensor data extension: a request body may be a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of
every input whose ``parameters.binary_data_size`` is set, in input order. Every rejection is a
:class:`ProtocolError` carrying the HTTP status to answer with and a message that names what was
expected and what came. The checks shared with the gRPC codec (input against the model's spec,
requested outputs, batch rules) are public here. Responses: :mod:`.protocol_response`.

JSON is parsed with orjson: about a tenth of the standard library's time for a request of 784
floats (21 against 234 µs; docs/serving.md), and it refuses nesting deeper than 1024 levels
instead of recursing (a 200k-deep body made the standard library raise RecursionError: a 500).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from stn_deploy.errors import StnDeployError
from stn_deploy.runtime.serving import classification
from stn_deploy.runtime.session import TensorSpec, non_finite_message

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "ProtocolError",
    "RequestedOutput",
    "InferRequest",
    "RequestDecoder",
    "datatype_of",
    "decode_infer_request",
    "check_input",
    "requested_output",
    "finish_request",
    "describe",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# KServe v2 datatype -> numpy dtype (BYTES is not a tensor type any STN uses).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_NUMPY_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
_EMPTY: dict = {}


class ProtocolError(StnDeployError):
    """A request the server cannot accept; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# Immutable records built once per request: NamedTuples, because a frozen dataclass's
# __init__ (object.__setattr__ per field) shows up in the server's per-request profile.
class RequestedOutput(NamedTuple):
    name: str
    binary: bool
    class_count: int = 0  # Triton's classification extension: top-k classes instead (0: off)


class InferRequest(NamedTuple):
    """A decoded request: inputs as arrays and the outputs to send back, in order."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    batch_size: int


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype."""
    try:
        return _NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"dtype {dtype} has no KServe v2 datatype", 500) from None


def describe(spec: TensorSpec) -> str:
    """``input [-1,1,28,28] FP32``: a tensor as the protocol names it."""
    dims = ",".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape)
    return f"{spec.name} [{dims}] {datatype_of(spec.dtype)}"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _loads(raw: bytes | memoryview, header_length: Any, body: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):
            raise ProtocolError(
                f"invalid JSON in the request header: nested deeper than 1024 levels ({exc}); "
                'expected {"inputs": [{"name": ..., "shape": [...], "datatype": ..., '
                '"data": [...]}]}'
            ) from None
        first = exc
    try:  # the standard library also takes NaN and Infinity, which get their own message later
        return json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    hint = ""
    if header_length is None and b"binary_data_size" in bytes(body[:4096]):
        hint = f"; binary tensor data needs the {HEADER_LENGTH} header (the JSON part's size)"
    raise ProtocolError(f"invalid JSON in the request header: {first}{hint}") from None


def _parse_header(body: bytes, header_length: str | int | None) -> tuple[dict, memoryview]:
    if header_length is None:
        header, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes; "
                "expected the JSON header length, at most the body size"
            )
        view = memoryview(body)
        header, rest = view[:n], view[n:]  # neither the header nor the tensors are copied
    doc = _loads(header, header_length, body)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ProtocolError(
            'expected a JSON object with a non-empty "inputs" list, e.g. {"inputs": [{"name": '
            '"input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [...]}]}'
        )
    return doc, memoryview(rest)  # no copy when rest is already a view


def _parameters(holder: Mapping, where: str) -> Mapping:
    """``holder["parameters"]`` as a dict ({} when absent or null); 400 for anything else."""
    params = holder.get("parameters")
    if params is None:
        return _EMPTY
    if not isinstance(params, dict):
        raise ProtocolError(
            f'{where} "parameters" must be a JSON object, got {_json_type(params)}; '
            'e.g. "parameters": {"binary_data_output": true}'
        )
    return params


def _flag(params: Mapping, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(
            f"{where} parameter {key!r} must be true or false, got {_json_type(value)} "
            f"{value!r:.40}"
        )
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise ProtocolError(f"input {name!r}: shape must be a list of ints >= 0, got {value!r:.80}")
    return tuple(value)


def check_input(
    name: Any, datatype: Any, shape: Any, spec_by_name: Mapping[str, TensorSpec]
) -> tuple[TensorSpec, tuple[int, ...]]:
    """One input's name, datatype and shape against the model; (its spec, its shape)."""
    spec = spec_by_name.get(name) if isinstance(name, str) else None
    if spec is None:
        want = ", ".join(describe(s) for s in spec_by_name.values())
        raise ProtocolError(f"unknown input {name!r:.80}; the model expects {want}")
    want_type = datatype_of(spec.dtype)
    if datatype != want_type:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r:.40}, expected {want_type}")
    dims = _shape(shape, name)
    if len(dims) != len(spec.shape) or any(
        isinstance(want, int) and want != got for want, got in zip(spec.shape, dims)
    ):
        raise ProtocolError(
            f"input {name!r} has shape {list(dims)}, expected {describe(spec)} "
            "(-1: any size; the first dimension is the batch)"
        )
    return spec, dims


def _decode_tensor(
    entry: Any, spec_by_name: Mapping[str, TensorSpec], binary: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f'each input must be an object with a "name", got {entry!r:.80}')
    name = entry["name"]
    spec, shape = check_input(name, entry.get("datatype"), entry.get("shape"), spec_by_name)
    dtype = np.dtype(spec.dtype)
    count = math.prod(shape)
    size = _parameters(entry, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise ProtocolError(
                f'input {name!r} has both "data" and binary_data_size; send its values one '
                'way: as "data", or as binary data after the JSON header'
            )
        need = count * dtype.itemsize
        if isinstance(size, bool) or size != need:
            raise ProtocolError(
                f"input {name!r}: binary_data_size is {size!r:.40}, but shape {list(shape)} "
                f"of {datatype_of(dtype)} needs {need} bytes"
            )
        if offset + need > len(binary):
            raise ProtocolError(
                f"truncated binary payload: input {name!r} needs {need} bytes at offset "
                f"{offset}, only {len(binary) - offset} follow the JSON header"
            )
        return name, _wrap(binary, dtype.newbyteorder("<"), shape, offset, need), offset + need
    if "data" not in entry:
        raise ProtocolError(f'input {name!r} has neither "data" nor binary_data_size')
    return name, json_array(entry["data"], dtype, shape, name), offset


def json_array(data: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A JSON "data" list (flat or nested, row-major) as an array of ``shape``: one numpy call."""
    kind = datatype_of(dtype)
    if not isinstance(data, list):
        raise ProtocolError(f'input {name!r}: "data" must be an array of {kind}, got '
                            f"{_json_type(data)}")  # fmt: skip
    try:
        with np.errstate(over="raise"):  # 1e39 as FP32 would become inf with only a warning
            array = np.asarray(data, dtype=dtype)
    except (FloatingPointError, OverflowError):
        limit = np.finfo(dtype).max if dtype.kind == "f" else np.iinfo(dtype).max
        raise ProtocolError(
            f"input {name!r}: data holds values beyond {kind}'s range (|x| <= {limit:.4g})"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: data is not a list of {kind}: {exc}") from None
    count = math.prod(shape)
    if array.size != count:
        raise ProtocolError(
            f"input {name!r}: {array.size} values for shape {list(shape)}, expected {count}"
        )
    return array.reshape(shape)


def _wrap(
    binary: memoryview, dtype: np.dtype, shape: tuple[int, ...], offset: int, nbytes: int
) -> np.ndarray:
    """The tensor at ``offset`` without a copy, or copied to an aligned buffer when misaligned.

    The JSON header's length decides the offset. The copy is ``bytes()``, which holds the GIL:
    numpy's own copy releases it for arrays this size, and on the server's event loop every
    release lets the batching thread in and costs a wait to get the GIL back (measured: 20 µs
    per request, in-process at concurrency 64; bench/profile_server.py).
    """
    array = np.frombuffer(binary, dtype, math.prod(shape), offset)
    if not array.flags.aligned:
        array = np.frombuffer(bytes(binary[offset : offset + nbytes]), dtype)
    return array.reshape(shape)


def _check_finite(name: str, array: np.ndarray) -> None:
    message = non_finite_message(name, array)
    if message is not None:
        raise ProtocolError(message)


def requested_output(
    name: Any, binary: bool, classification_value: Any, output_names: Sequence[str]
) -> RequestedOutput:
    """One requested output, checked against the model's outputs."""
    if name not in output_names:
        raise ProtocolError(f"unknown output {name!r:.80}; the model has {', '.join(output_names)}")
    try:
        k = classification.class_count(classification_value, name)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    return RequestedOutput(name, binary, k)


def _requested_outputs(doc: dict, output_names: Sequence[str]) -> tuple[RequestedOutput, ...]:
    default_binary = _flag(_parameters(doc, "the request's"), "binary_data_output", False,
                           "the request's")  # fmt: skip
    wanted = doc.get("outputs")
    if wanted is None:
        return tuple(RequestedOutput(n, default_binary) for n in output_names)
    if not isinstance(wanted, list):
        raise ProtocolError(f'"outputs" must be a list, got {_json_type(wanted)}')
    result = []
    for entry in wanted:
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"output {name!r:.80}"
        params = _parameters(entry, where) if name in output_names else _EMPTY
        binary = _flag(params, "binary_data", default_binary, where)
        result.append(
            requested_output(name, binary, params.get("classification", 0), output_names)
        )
    return _unique(tuple(result))


def _unique(outputs: tuple[RequestedOutput, ...]) -> tuple[RequestedOutput, ...]:
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"output(s) requested more than once: {names}; ask for each once")
    return outputs


def finish_request(
    request_id: str | None,
    arrays: dict[str, np.ndarray],
    outputs: tuple[RequestedOutput, ...],
    inputs: Sequence[TensorSpec],
    *,
    max_batch_size: int | None = None,
    check_finite: bool = True,
) -> InferRequest:
    """The rules every decoded request must meet, whatever its protocol: every input present,
    one batch size >= 1 (at most ``max_batch_size``: 413), finite values (``check_finite``)."""
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        want = ", ".join(describe(s) for s in inputs)
        raise ProtocolError(f"missing input(s) {missing}; the model expects {want}")
    batches = {a.shape[0] for a in arrays.values()}
    if len(batches) != 1 or 0 in batches:
        raise ProtocolError(f"inputs must share one batch size >= 1, got {sorted(batches)}")
    batch = batches.pop()
    if max_batch_size is not None and batch > max_batch_size:
        raise ProtocolError(
            f"batch of {batch} samples exceeds this server's limit of {max_batch_size} per "
            "request; split it",
            413,
        )
    if check_finite:
        for name, array in arrays.items():
            _check_finite(name, array)
    return InferRequest(request_id, arrays, outputs, batch)


def decode_infer_request(
    body: bytes,
    header_length: str | int | None,
    inputs: Sequence[TensorSpec],
    output_names: Sequence[str],
    *,
    max_batch_size: int | None = None,
    check_finite: bool = True,
) -> InferRequest:
    """Parse and validate one ``/infer`` body against the model's input specs.

    ``check_finite=False`` leaves NaN/Inf to the caller (the server's batcher checks once per
    batch, off the event loop).
    """
    doc, binary = _parse_header(body, header_length)
    spec_by_name = {s.name: s for s in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for entry in doc["inputs"]:
        name, array, offset = _decode_tensor(entry, spec_by_name, binary, offset)
        if name in arrays:
            raise ProtocolError(f"input {name!r} appears twice")
        arrays[name] = array
    if offset != len(binary):
        raise ProtocolError(
            f"{len(binary) - offset} bytes follow the inputs' binary data; expected none "
            "(binary_data_size must add up to the bytes after the JSON header)"
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f'"id" must be a string, got {_json_type(request_id)}')
    return finish_request(
        request_id,
        arrays,
        _requested_outputs(doc, output_names),
        inputs,
        max_batch_size=max_batch_size,
        check_finite=check_finite,
    )


class _BinaryLayout(NamedTuple):
    """What a binary-only request header decoded to, minus the tensor bytes it describes."""

    tensors: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]  # +offset, nbytes
    size: int  # bytes that must follow the header
    request: InferRequest  # id, outputs and batch size; its inputs are replaced on reuse


class RequestDecoder:
    """:func:`decode_infer_request` bound to one model, remembering binary-request headers.

    A client sending binary tensors repeats its JSON header byte for byte (same shapes, same
    outputs, usually no id), and parsing plus validating that header is most of the decoding
    time (about 25 of 30 µs on our 2-core box). A header seen before therefore skips both: its
    tensors are wrapped at the remembered offsets and only checked for NaN/Inf. Anything that
    does not match (other sizes, JSON data, a new header) takes the full path, which also
    produces every error message. At most ``cache_size`` headers are kept.
    ``check_finite=False``: as in :func:`decode_infer_request`.
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str],
        *,
        max_batch_size: int | None = None,
        cache_size: int = 256,
        check_finite: bool = True,
    ) -> None:
        self.check_finite = check_finite
        self.inputs = tuple(inputs)
        self.output_names = tuple(output_names)
        self.max_batch_size = max_batch_size
        self.cache_size = cache_size
        self._layouts: dict[bytes, _BinaryLayout] = {}

    @property
    def remembered_headers(self) -> int:
        return len(self._layouts)

    def decode(self, body: bytes, header_length: str | int | None) -> InferRequest:
        key = None
        if header_length is not None:
            with contextlib.suppress(ValueError):
                n = int(header_length)
                key = body[:n] if 0 < n <= len(body) else None
            layout = self._layouts.get(key) if key else None
            if layout is not None and len(body) - len(key) == layout.size:
                return self._reuse(layout, memoryview(body)[len(key) :])
        request = decode_infer_request(
            body,
            header_length,
            self.inputs,
            self.output_names,
            max_batch_size=self.max_batch_size,
            check_finite=self.check_finite,
        )
        if key and self.cache_size:
            self._remember(key, len(body) - len(key), request)
        return request

    def _remember(self, key: bytes, size: int, request: InferRequest) -> None:
        offset, tensors = 0, []
        for name, array in request.inputs.items():
            tensors.append((name, array.dtype.newbyteorder("<"), array.shape, offset, array.nbytes))
            offset += array.nbytes
        if offset != size:  # some input came as JSON data: its values live in the header
            return
        if len(self._layouts) >= self.cache_size:
            self._layouts.clear()  # clients with changing headers (ids): start over, stay bounded
        self._layouts[key] = _BinaryLayout(tuple(tensors), size, request._replace(inputs={}))

    def _reuse(self, layout: _BinaryLayout, binary: memoryview) -> InferRequest:
        arrays = {}
        for name, dtype, shape, offset, nbytes in layout.tensors:
            array = _wrap(binary, dtype, shape, offset, nbytes)
            if self.check_finite:
                _check_finite(name, array)
            arrays[name] = array
        head = layout.request
        return InferRequest(head.id, arrays, head.outputs, head.batch_size)
