"""MLServer custom runtime on ONNX Runtime (run inside MLServer's own venv).

MLServer 1.7 ships no ONNX runtime, so this is the documented custom-runtime path: an MLModel
whose ``load`` opens the session and whose ``predict`` decodes the input with NumpyCodec and
encodes ``logits``. Adaptive batching (``max_batch_size``, ``max_batch_time`` in
model-settings.json) merges requests along the first dimension before ``predict`` and splits the
answer after it. One ONNX Runtime intra-op thread without spinning, as ``stn-deploy serve`` runs.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self.session.run(["logits"], {"input": x})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)]
        )
