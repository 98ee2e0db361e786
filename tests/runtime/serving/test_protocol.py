"""KServe v2 decode/encode as pure functions, checked against tritonclient's own encoder/decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from stn_deploy.runtime.serving.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    RequestDecoder,
    RequestedOutput,
    decode_infer_request,
)
from stn_deploy.runtime.serving.protocol_response import (
    encode_infer_response,
    error_body,
    model_metadata,
)
from stn_deploy.runtime.session import TensorSpec

SPECS = (TensorSpec("input", (None, 1, 4, 4), "float32"),)
OUTS = ("logits", "theta")


def _client_body(x, binary=True, outputs=None):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return _get_inference_request([inp], "req-7", outputs, 0, False, False, 0, None, None)


@pytest.mark.parametrize("binary", [True, False])
def test_decodes_what_tritonclient_sends(rng, binary):
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    body, header_len = _client_body(x, binary)
    req = decode_infer_request(body, header_len, SPECS, OUTS)
    np.testing.assert_array_equal(req.inputs["input"], x)
    assert req.id == "req-7"
    assert req.batch_size == 3
    # no outputs named: tritonclient asks for all of them in binary
    assert [(o.name, o.binary) for o in req.outputs] == [("logits", True), ("theta", True)]


def test_requested_outputs_keep_order_and_binary_flag(rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    outs = [httpclient.InferRequestedOutput("theta", binary_data=False)]
    body, header_len = _client_body(x, True, outs)
    req = decode_infer_request(body, header_len, SPECS, OUTS)
    assert [(o.name, o.binary) for o in req.outputs] == [("theta", False)]


@pytest.mark.parametrize("binary_outputs", [True, False])
def test_tritonclient_reads_what_we_encode(rng, binary_outputs):
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary_outputs) for n in OUTS]
    body, header_len = _client_body(x, True, outs)
    req = decode_infer_request(body, header_len, SPECS, OUTS)
    logits = rng.standard_normal((2, 10)).astype(np.float32)
    theta = rng.standard_normal((2, 2, 3)).astype(np.float32)
    payload, headers = encode_infer_response("m", req, {"logits": logits, "theta": theta})
    result = httpclient.InferResult.from_response_body(
        payload, header_length=int(headers[HEADER_LENGTH]) if binary_outputs else None
    )
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("theta"), theta)
    assert result.get_response()["id"] == "req-7"
    assert (HEADER_LENGTH in headers) is binary_outputs


def _json_body(**entry):
    base = {"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.5] * 16}
    base.update(entry)
    return json.dumps({"inputs": [base]}).encode()


@pytest.mark.parametrize(
    ("body", "header_len", "status", "message"),
    [
        (b"{not json", None, 400, "invalid JSON"),
        (b'{"outputs": []}', None, 400, 'non-empty "inputs"'),
        (_json_body(name="image"), None, 400, "unknown input 'image'; the model expects input"),
        (_json_body(datatype="FP64"), None, 400, "datatype 'FP64', expected FP32"),
        (_json_body(shape=[1, 1, 5, 4]), None, 400, r"shape \[1, 1, 5, 4\], expected input"),
        (_json_body(shape=[1, 4, 4]), None, 400, r"expected input \[-1,1,4,4\] FP32"),
        (_json_body(data=[0.5] * 15), None, 400, "15 values for shape"),
        (_json_body(data=["a"] * 16), None, 400, "not a list of FP32"),
        (_json_body(data=[0.5] * 15 + [float("nan")]), None, 400, "1 NaN/Inf values"),
        (_json_body(data=[float("inf")] * 16), None, 400, "16 NaN/Inf"),
        (_json_body(data=[0.5] * 15 + [1e39]), None, 400, r"beyond FP32's range \(\|x\| <= 3\.4"),
        (_json_body(shape=[0, 1, 4, 4], data=[]), None, 400, "batch size >= 1"),
        (_json_body(shape=[-1, 1, 4, 4]), None, 400, "list of ints >= 0"),
        (_json_body(), "12x", 400, "must be an integer"),
        (_json_body(), 10_000, 400, "at most the body size"),
    ],
)
def test_bad_requests_name_expected_and_got(body, header_len, status, message):
    with pytest.raises(ProtocolError, match=message) as err:
        decode_infer_request(body, header_len, SPECS, OUTS)
    assert err.value.status == status


def _doc_body(**top):
    doc = json.loads(_json_body())
    doc.update(top)
    return json.dumps(doc).encode()


_BOTH = {"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.5] * 16,
         "parameters": {"binary_data_size": 64}}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "header_len", "message"),
    [
        # the three answers that were wrong: a 500 (RecursionError), a 500, a 200
        (b"[" * 200_000, None, "nested deeper than 1024 levels"),
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, "nested deeper than 1024"),
        (_doc_body(parameters=[]), None, '"parameters" must be a JSON object, got array'),
        (json.dumps({"inputs": [_BOTH]}).encode() + bytes(64), 0, 'has both "data" and binary'),
        # their relatives
        (_doc_body(parameters="binary"), None, '"parameters" must be a JSON object, got string'),
        (_doc_body(parameters={"binary_data_output": "yes"}), None, "must be true or false"),
        (_doc_body(outputs=[{"name": "logits", "parameters": [1]}]), None, "got array"),
        (_doc_body(outputs=[{"name": "logits", "parameters": {"binary_data": 1}}]), None,
         "'binary_data' must be true or false, got number"),
        (_doc_body(outputs=[{"name": "logits"}, {"name": "logits"}]), None, "more than once"),
        (_doc_body(outputs={"name": "logits"}), None, '"outputs" must be a list, got object'),
        (_doc_body(id=7), None, '"id" must be a string, got number'),
        (_json_body(parameters=[{"binary_data_size": 64}]), None, "got array"),
        (_json_body(data={"0": 0.5}), None, '"data" must be an array of FP32, got object'),
        (_json_body(data=[[0.5] * 16] * 2), None, "32 values for shape"),
        (_json_body(data=[[0.5, [0.5]]] * 8), None, "not a list of FP32"),
        (_json_body(data=[{}] * 16), None, "not a list of FP32"),
        (_json_body(name=["input"]), None, 'an object with a "name"'),
        (_json_body(shape=[1, 1, 4, True]), None, "list of ints >= 0"),
        (_json_body(shape="1,1,4,4"), None, "list of ints >= 0"),
    ],
)
def test_hostile_bodies_get_400_naming_the_fault(body, header_len, message):
    if header_len == 0:
        header_len = len(body) - 64
    with pytest.raises(ProtocolError, match=message) as err:
        decode_infer_request(body, header_len, SPECS, OUTS)
    assert err.value.status == 400


def test_binary_body_without_its_header_length_says_which_header_is_missing():
    x = np.full((1, 1, 4, 4), 0.1, np.float32)  # bytes cd cc cc 3d: not UTF-8
    body, header_len = _client_body(x)
    assert header_len is not None
    with pytest.raises(ProtocolError, match="needs the Inference-Header-Content-Length header"):
        decode_infer_request(body, None, SPECS, OUTS)
    with pytest.raises(ProtocolError) as plain:  # a JSON typo gets no such hint
        decode_infer_request(b"{not json", None, SPECS, OUTS)
    assert "Inference-Header-Content-Length" not in str(plain.value)


def test_truncated_binary_payload(rng):
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    body, header_len = _client_body(x)
    with pytest.raises(ProtocolError, match="truncated binary payload: .* needs 128 bytes"):
        decode_infer_request(body[:-5], header_len, SPECS, OUTS)
    with pytest.raises(ProtocolError, match="5 bytes follow"):
        decode_infer_request(body + b"extra", header_len, SPECS, OUTS)


def test_oversized_batch_is_413(rng):
    x = rng.standard_normal((9, 1, 4, 4)).astype(np.float32)
    body, header_len = _client_body(x)
    with pytest.raises(ProtocolError, match="batch of 9 samples exceeds .* limit of 8") as err:
        decode_infer_request(body, header_len, SPECS, OUTS, max_batch_size=8)
    assert err.value.status == 413


def test_unknown_requested_output():
    body = json.loads(_json_body())
    body["outputs"] = [{"name": "warped_image"}]
    with pytest.raises(ProtocolError, match="unknown output 'warped_image'; the model has logits"):
        decode_infer_request(json.dumps(body).encode(), None, SPECS, OUTS)


def test_metadata_and_error_documents():
    meta = model_metadata("tutorial", SPECS, [TensorSpec("logits", (None, 10))], "onnxruntime")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert meta["outputs"][0]["shape"] == [-1, 10]
    assert json.loads(error_body("boom")) == {"error": "boom"}


def test_binary_inputs_decode_aligned_whatever_the_header_length(rng):
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    for pad in range(4):  # header lengths of every residue mod 4
        header = json.dumps(
            {"id": " " * pad, "inputs": [{"name": "input", "shape": [2, 1, 4, 4],
             "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]}
        ).encode()  # fmt: skip
        req = decode_infer_request(header + x.tobytes(), len(header), SPECS, OUTS)
        assert req.inputs["input"].flags.aligned
        np.testing.assert_array_equal(req.inputs["input"], x)


# -- RequestDecoder: the server's decoder, which remembers binary-request headers ----------------
def _binary_body(x, request_id=None):
    doc = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                       "parameters": {"binary_data_size": x.nbytes}}]}  # fmt: skip
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc).encode()
    return header + x.tobytes(), len(header)


def test_decoder_reuses_a_header_but_never_its_tensors(rng):
    decoder = RequestDecoder(SPECS, OUTS)
    for _ in range(3):  # same header every time, fresh values every time
        x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
        body, header_len = _binary_body(x)
        req = decoder.decode(body, header_len)
        full = decode_infer_request(body, header_len, SPECS, OUTS)
        np.testing.assert_array_equal(req.inputs["input"], x)
        assert (req.id, req.outputs, req.batch_size) == (full.id, full.outputs, full.batch_size)
        assert req.inputs["input"].flags.aligned


def test_decoder_with_a_known_header_still_rejects_bad_payloads(rng):
    decoder = RequestDecoder(SPECS, OUTS)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    body, header_len = _binary_body(x)
    decoder.decode(body, header_len)
    bad = x.copy()
    bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ProtocolError, match=r"1 NaN/Inf values \(first at flat index 27\)"):
        decoder.decode(_binary_body(bad)[0], header_len)
    bad[1, 0, 2, 3] = np.inf
    with pytest.raises(ProtocolError, match="NaN/Inf"):
        decoder.decode(_binary_body(bad)[0], header_len)
    with pytest.raises(ProtocolError, match="truncated binary payload: .* needs 128 bytes"):
        decoder.decode(body[:-4], header_len)
    with pytest.raises(ProtocolError, match="4 bytes follow"):
        decoder.decode(body + b"more", header_len)
    with pytest.raises(ProtocolError, match="at most the body size"):
        decoder.decode(body, -128)  # body[:-128] is the header: must not be taken for it


def test_decoder_json_data_and_changing_ids_decode_correctly_and_stay_bounded(rng):
    decoder = RequestDecoder(SPECS, OUTS, cache_size=2)
    for i in range(5):
        x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
        body, header_len = _binary_body(x, request_id=f"r{i}")
        req = decoder.decode(body, header_len)
        assert req.id == f"r{i}"
        np.testing.assert_array_equal(req.inputs["input"], x)
        doc = {"inputs": [{"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32",
                           "data": x.ravel().tolist()}]}  # fmt: skip
        req = decoder.decode(json.dumps(doc).encode(), None)
        np.testing.assert_array_equal(req.inputs["input"], x)
        assert decoder.remembered_headers <= 2


def test_binary_response_headers_follow_each_answers_shape_and_id(rng):
    for batch, request_id in ((3, None), (5, None), (3, "req-9"), (3, None)):
        x = rng.standard_normal((batch, 1, 4, 4)).astype(np.float32)
        body, header_len = _binary_body(x, request_id)
        req = RequestDecoder(SPECS, OUTS).decode(body, header_len)
        req = req._replace(outputs=tuple(RequestedOutput(n, True) for n in OUTS))
        logits = rng.standard_normal((batch, 10)).astype(np.float32)
        theta = rng.standard_normal((batch, 2, 3)).astype(np.float32)
        payload, headers = encode_infer_response("m", req, {"logits": logits, "theta": theta})
        n = int(headers[HEADER_LENGTH])
        doc = json.loads(payload[:n])
        assert doc.get("id") == request_id
        assert [(o["shape"], o["parameters"]["binary_data_size"]) for o in doc["outputs"]] == [
            ([batch, 10], batch * 40), ([batch, 2, 3], batch * 24)
        ]
        got = np.frombuffer(payload[n:], np.float32)
        np.testing.assert_array_equal(got, np.concatenate([logits.ravel(), theta.ravel()]))
