"""LitServe serving the same ONNX file over the same KServe v2 JSON bodies (run in its own venv).

    python litserve_app.py MODEL.onnx NAME PORT MAX_BATCH BATCH_TIMEOUT_S

LitServe's documented batching: ``max_batch_size`` and ``batch_timeout`` on the LitAPI; its
``batch`` concatenates the requests' [1, C, H, W] inputs, ``unbatch`` gives each its row. One
ONNX Runtime intra-op thread without spinning, as ``stn-deploy serve`` runs on 2 cores.
Requests carry one sample each (the peer benchmark sends one).
"""

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort
from kserve_json import decode_request, encode_response

MODEL, NAME, PORT, MAX_BATCH, TIMEOUT = sys.argv[1:6]


class OnnxAPI(ls.LitAPI):
    def setup(self, device):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return decode_request(request)

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.session.run(["logits"], {"input": x})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return encode_response(NAME, output)


if __name__ == "__main__":
    api = OnnxAPI(max_batch_size=int(MAX_BATCH), batch_timeout=float(TIMEOUT),
                  api_path=f"/v2/models/{NAME}/infer")  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=int(PORT), log_level="warning", generate_client_file=False)
