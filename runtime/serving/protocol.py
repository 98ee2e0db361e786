"""KServe v2 / Open Inference Protocol bodies <-> numpy: pure decode and encode, no I/O.

Covers JSON tensors and Triton's binary tensor data extension: a request body may be a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of
every input whose ``parameters.binary_data_size`` is set, in input order; outputs are returned
the same way when the request asks for ``binary_data`` (per output) or ``binary_data_output``
(for all). Every rejection is a :class:`ProtocolError` carrying the HTTP status to answer with
and a message that names what was expected and what came.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from stn_deploy.errors import StnDeployError
from stn_deploy.runtime.serving import classification
from stn_deploy.runtime.session import TensorSpec, non_finite_message

__all__ = [
    "DATATYPES",
    "ProtocolError",
    "RequestedOutput",
    "InferRequest",
    "decode_infer_request",
    "RequestDecoder",
    "encode_infer_response",
    "model_metadata",
    "error_body",
    "HEADER_LENGTH",
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


def _describe(spec: TensorSpec) -> str:
    dims = ",".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape)
    return f"{spec.name} [{dims}] {datatype_of(spec.dtype)}"


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
        header, rest = view[:n].tobytes(), view[n:]  # the tensor bytes are not copied
    try:
        doc = json.loads(header.decode("utf-8"))  # str: skips json's encoding sniffing
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = ""
        if header_length is None and b"binary_data_size" in bytes(body[:4096]):
            hint = f"; binary tensor data needs the {HEADER_LENGTH} header (the JSON part's size)"
        raise ProtocolError(f"invalid JSON in the request header: {exc}{hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ProtocolError(
            'expected a JSON object with a non-empty "inputs" list, e.g. {"inputs": [{"name": '
            '"input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [...]}]}'
        )
    return doc, memoryview(rest)  # no copy when rest is already a view


def _shape(entry: Mapping, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input {name!r}: shape must be a list of ints >= 0, got {shape!r}")
    return tuple(shape)


def _check_against_spec(name: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    if len(shape) != len(spec.shape) or any(
        isinstance(want, int) and want != got for want, got in zip(spec.shape, shape)
    ):
        raise ProtocolError(
            f"input {name!r} has shape {list(shape)}, expected {_describe(spec)} "
            "(-1: any size; the first dimension is the batch)"
        )


def _decode_tensor(
    entry: Any, spec_by_name: Mapping[str, TensorSpec], binary: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f'each input must be an object with a "name", got {entry!r:.80}')
    name = entry["name"]
    spec = spec_by_name.get(name)
    if spec is None:
        want = ", ".join(_describe(s) for s in spec_by_name.values())
        raise ProtocolError(f"unknown input {name!r}; the model expects {want}")
    want_type = datatype_of(spec.dtype)
    if entry.get("datatype") != want_type:
        raise ProtocolError(
            f"input {name!r} has datatype {entry.get('datatype')!r}, expected {want_type}"
        )
    shape = _shape(entry, name)
    _check_against_spec(name, shape, spec)
    dtype = np.dtype(spec.dtype)
    count = math.prod(shape)
    params = entry.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        need = count * dtype.itemsize
        if size != need:
            raise ProtocolError(
                f"input {name!r}: binary_data_size is {size} bytes, but shape {list(shape)} "
                f"of {want_type} needs {need}"
            )
        if offset + need > len(binary):
            raise ProtocolError(
                f"truncated binary payload: input {name!r} needs {need} bytes at offset "
                f"{offset}, only {len(binary) - offset} follow the JSON header"
            )
        return name, _wrap(binary, dtype.newbyteorder("<"), shape, offset, need), offset + need
    if "data" not in entry:
        raise ProtocolError(f'input {name!r} has neither "data" nor binary_data_size')
    try:
        with np.errstate(over="raise"):  # 1e39 as FP32 would become inf with only a warning
            array = np.asarray(entry["data"], dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: data is not a list of {want_type}: {exc}") from None
    except (FloatingPointError, OverflowError):
        limit = np.finfo(dtype).max if dtype.kind == "f" else np.iinfo(dtype).max
        raise ProtocolError(
            f"input {name!r}: data holds values beyond {want_type}'s range (|x| <= {limit:.4g})"
        ) from None
    if array.size != count:
        raise ProtocolError(
            f"input {name!r}: {array.size} values for shape {list(shape)}, expected {count}"
        )
    return name, array.reshape(shape), offset


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


def _requested_outputs(doc: dict, output_names: Sequence[str]) -> tuple[RequestedOutput, ...]:
    params = doc.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = doc.get("outputs")
    if wanted is None:
        return tuple(RequestedOutput(n, default_binary) for n in output_names)
    if not isinstance(wanted, list):
        raise ProtocolError(f'"outputs" must be a list, got {type(wanted).__name__}')
    result = []
    for entry in wanted:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in output_names:
            raise ProtocolError(f"unknown output {name!r}; the model has {', '.join(output_names)}")
        out_params = entry.get("parameters") or {}
        binary = bool(out_params.get("binary_data", default_binary))
        try:
            k = classification.class_count(out_params.get("classification", 0), name)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        result.append(RequestedOutput(name, binary, k))
    return tuple(result)


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
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        want = ", ".join(_describe(s) for s in inputs)
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
    request_id = doc.get("id")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=arrays,
        outputs=_requested_outputs(doc, output_names),
        batch_size=batch,
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


def encode_infer_response(
    model_name: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
    model_version: str = "1",
) -> tuple[bytes, dict[str, str]]:
    """Build the response body and headers for the requested outputs."""
    arrays = [np.asarray(outputs[want.name]) for want in request.outputs]
    if any(want.class_count for want in request.outputs):
        arrays = _classified(request.outputs, arrays)
    elif all(want.binary for want in request.outputs):  # the common case: one cached header
        raws = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]
        layout = tuple(
            (want.name, a.dtype.str, a.shape) for want, a in zip(request.outputs, arrays)
        )
        header = _binary_response_header(model_name, model_version, request.id, layout)
        return b"".join([header, *raws]), {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
        }
    entries = []
    chunks: list[bytes] = []
    for want, array in zip(request.outputs, arrays):
        text = array.dtype == object  # BYTES: a classification's "score:index" strings
        entry: dict[str, Any] = {
            "name": want.name,
            "datatype": "BYTES" if text else datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if want.binary:
            if text:
                raw = classification.bytes_tensor(array)
            else:
                raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif text:
            entry["data"] = [item.decode() for item in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    header = _response_header(model_name, model_version, request.id, entries)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _classified(wanted: Sequence[RequestedOutput], arrays: list[np.ndarray]) -> list[np.ndarray]:
    try:
        return [
            classification.top_k(a, w.class_count, w.name) if w.class_count else a
            for w, a in zip(wanted, arrays)
        ]
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _response_header(name: str, version: str, request_id: str | None, entries: list) -> bytes:
    doc: dict[str, Any] = {"model_name": name, "model_version": version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    return json.dumps(doc, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=256)
def _binary_response_header(
    name: str, version: str, request_id: str | None, layout: tuple[tuple[str, str, tuple], ...]
) -> bytes:
    """The JSON header of an all-binary response; the same for every answer of one shape.

    json.dumps was about a tenth of the event loop's time per request under load.
    """
    entries = []
    for out_name, dtype, shape in layout:
        dt = np.dtype(dtype)
        entries.append({
            "name": out_name,
            "datatype": datatype_of(dt),
            "shape": list(shape),
            "parameters": {"binary_data_size": math.prod(shape) * dt.itemsize},
        })  # fmt: skip
    return _response_header(name, version, request_id, entries)


def model_metadata(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    platform: str,
    versions: Sequence[str] = ("1",),
) -> dict:
    """The ``GET /v2/models/{name}`` document."""

    def tensor(spec: TensorSpec) -> dict:
        dims = [d if isinstance(d, int) else -1 for d in spec.shape]
        return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": dims}

    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [tensor(s) for s in inputs],
        "outputs": [tensor(s) for s in outputs],
    }


def error_body(message: str) -> bytes:
    """The protocol's error document."""
    return json.dumps({"error": message}).encode()
