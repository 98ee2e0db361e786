"""ModelInfer messages <-> numpy as pure functions, against tritonclient's own request builder."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request

from stn_deploy.runtime.serving.grpc_codec import (
    decode_model_infer,
    encode_model_infer,
    grpc_code,
)
from stn_deploy.runtime.serving.protocol import ProtocolError, RequestedOutput
from stn_deploy.runtime.session import TensorSpec

SPECS = (TensorSpec("input", (None, 1, 4, 4), "float32"),)
OUTS = ("logits", "theta")


def _client_request(x, outputs=None, request_id="req-3"):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return _get_inference_request(
        model_name="m", inputs=[inp], model_version="", request_id=request_id, outputs=outputs,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters=None,
    )  # fmt: skip


def _typed(values, datatype="FP32", shape=(1, 1, 4, 4), field="fp32_contents", **extra):
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype=datatype, shape=list(shape)
    )
    getattr(tensor.contents, field).extend(values)
    return service_pb2.ModelInferRequest(model_name="m", inputs=[tensor], **extra)


def test_decodes_what_tritonclient_sends(rng):
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    outs = [grpcclient.InferRequestedOutput("theta"), grpcclient.InferRequestedOutput("logits")]
    req = decode_model_infer(_client_request(x, outs), SPECS, OUTS)
    np.testing.assert_array_equal(req.inputs["input"], x)
    assert (req.id, req.batch_size) == ("req-3", 3)
    assert [o.name for o in req.outputs] == ["theta", "logits"]
    every = decode_model_infer(_client_request(x, request_id=""), SPECS, OUTS)
    assert every.id is None and [o.name for o in every.outputs] == list(OUTS)


def test_decodes_typed_contents(rng):
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    req = decode_model_infer(_typed(x.ravel().tolist(), shape=x.shape), SPECS, OUTS)
    np.testing.assert_array_equal(req.inputs["input"], x)


def test_tritonclient_reads_what_we_encode(rng):
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    outs = [grpcclient.InferRequestedOutput("logits"),
            grpcclient.InferRequestedOutput("theta", class_count=2)]  # fmt: skip
    req = decode_model_infer(_client_request(x, outs), SPECS, OUTS)
    assert req.outputs == (RequestedOutput("logits", True, 0), RequestedOutput("theta", True, 2))
    logits = rng.standard_normal((2, 10)).astype(np.float32)
    theta = rng.standard_normal((2, 2, 3)).astype(np.float32)
    with pytest.raises(ProtocolError, match="classification needs"):  # theta is not [N, classes]
        encode_model_infer("m", "1", req, {"logits": logits, "theta": theta})
    req = req._replace(outputs=(RequestedOutput("logits", True, 3), RequestedOutput("theta", True)))
    response = encode_model_infer("m", "1", req, {"logits": logits, "theta": theta})
    result = grpcclient.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("theta"), theta)
    top = result.as_numpy("logits")
    assert top.shape == (2, 3)
    best = np.argsort(-logits, axis=1)[:, :3]
    assert [[int(s.split(b":")[1]) for s in row] for row in top] == best.tolist()
    assert response.id == "req-3" and response.model_version == "1"


def _raw(x_bytes, shape=(1, 1, 4, 4), datatype="FP32", n_raw=1):
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype=datatype, shape=list(shape)
    )
    return service_pb2.ModelInferRequest(
        model_name="m", inputs=[tensor], raw_input_contents=[x_bytes] * n_raw
    )


_GOOD = np.full(16, 0.5, np.float32).tobytes()


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (service_pb2.ModelInferRequest(model_name="m"), "at least one input"),
        (_raw(_GOOD[:-4]), "raw_input_contents holds 60 bytes, but shape [1, 1, 4, 4] of FP32"),
        (_raw(_GOOD + b"\0" * 4), "holds 68 bytes"),
        (_raw(_GOOD, n_raw=2), "raw_input_contents has 2 entries for 1 inputs"),
        (_raw(_GOOD, datatype="FP64"), "datatype 'FP64', expected FP32"),
        (_raw(_GOOD, datatype="INT8"), "expected FP32"),
        (_raw(_GOOD, shape=(1, 4, 4)), "expected input [-1,1,4,4] FP32"),
        (_raw(_GOOD, shape=(-1, 1, 4, 4)), "list of ints >= 0"),
        (_raw(_GOOD, shape=(0, 1, 4, 4)), "holds 64 bytes"),
        (_typed([0.5] * 15), "15 values for shape"),
        (_typed([1] * 16, field="int_contents"), "carries contents.int_contents; expected "
                                                 "contents.fp32_contents"),
        (_typed([], field="fp32_contents"), "carries no contents"),
        (_typed([1e39] * 16, field="fp64_contents"), "carries contents.fp64_contents"),
        (_typed([0.5] * 16, outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(
            name="probs")]), "unknown output 'probs'"),
        (_typed([0.5] * 16, outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(
            name="logits")] * 2), "more than once"),
    ],
)
def test_bad_messages_get_the_http_codecs_messages(message, fragment):
    with pytest.raises(ProtocolError) as err:
        decode_model_infer(message, SPECS, OUTS, max_batch_size=8)
    assert fragment in str(err.value)
    assert grpc_code(err.value.status).name == "INVALID_ARGUMENT"


def test_typed_and_raw_together_and_fp16_without_raw_are_refused():
    both = _raw(_GOOD)
    both.inputs[0].contents.fp32_contents.extend([0.5] * 16)
    with pytest.raises(ProtocolError, match="both typed contents and raw_input_contents"):
        decode_model_infer(both, SPECS, OUTS)
    half = (TensorSpec("input", (None, 2), "float16"),)
    with pytest.raises(ProtocolError, match="FP16, which has no typed contents field"):
        decode_model_infer(_typed([1.0, 2.0], datatype="FP16", shape=(1, 2)), half, OUTS)
    req = decode_model_infer(_raw(np.ones(2, np.float16).tobytes(), (1, 2), "FP16"), half, OUTS)
    assert req.inputs["input"].dtype == np.float16


def test_classification_parameter_must_be_an_integer():
    out = service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")
    out.parameters["classification"].string_param = "3"
    with pytest.raises(ProtocolError, match="must be an int64_param, got string_param"):
        decode_model_infer(_typed([0.5] * 16, outputs=[out]), SPECS, OUTS)


def test_oversized_batch_maps_to_resource_exhausted(rng):
    x = rng.standard_normal((9, 1, 4, 4)).astype(np.float32)
    with pytest.raises(ProtocolError, match="batch of 9 samples exceeds") as err:
        decode_model_infer(_client_request(x), SPECS, OUTS, max_batch_size=8)
    assert grpc_code(err.value.status).name == "RESOURCE_EXHAUSTED"
    assert [grpc_code(s).name for s in (404, 503, 500, 408)] == [
        "NOT_FOUND", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"
    ]  # fmt: skip
