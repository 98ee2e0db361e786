"""The KServe v2 JSON body <-> numpy for the LitServe app: pure, importable anywhere (CI tests it).

LitServe has no KServe v2 protocol of its own; its app (``litserve_app.py``) takes the same JSON
request body our load client sends every server and answers the same JSON response, so one
client drives all three servers. Plain ``json``/numpy, as a LitServe user would write it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_request", "encode_response"]


def decode_request(doc: dict, input_name: str = "input") -> np.ndarray:
    """The named FP32 input of a KServe v2 JSON request as an array of its shape."""
    for entry in doc["inputs"]:
        if entry["name"] == input_name:
            if entry.get("datatype") != "FP32":
                raise ValueError(f"input {input_name!r} must be FP32, got {entry.get('datatype')}")
            return np.asarray(entry["data"], dtype=np.float32).reshape(entry["shape"])
    raise ValueError(f"the request has no input {input_name!r}")


def encode_response(model_name: str, logits: np.ndarray) -> dict:
    """A KServe v2 JSON response holding ``logits`` (a batch of one or more rows)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 1:
        logits = logits[None]
    return {
        "model_name": model_name,
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape),
             "data": logits.ravel().tolist()}
        ],
    }  # fmt: skip
