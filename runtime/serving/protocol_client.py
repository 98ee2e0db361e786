"""The client side of the KServe v2 protocol: request bodies as tritonclient sends them, with
binary tensors or as JSON.

For clients that build requests themselves, such as the load benchmark, which pre-builds them
to keep its own CPU cost out of the measurement; and for tests that speak raw HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from stn_deploy.runtime.serving.protocol import HEADER_LENGTH, datatype_of

__all__ = ["encode_infer_request", "encode_json_request"]


def encode_infer_request(
    inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ("logits",)
) -> tuple[bytes, dict[str, str]]:
    """A client's binary-tensor request body and headers (what tritonclient sends)."""
    entries, chunks = [], []
    for name, array in inputs.items():
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        entries.append({
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array.dtype),
            "parameters": {"binary_data_size": len(raw)},
        })
        chunks.append(raw)
    doc = {
        "inputs": entries,
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
    }
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def encode_json_request(
    inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ("logits",)
) -> tuple[bytes, dict[str, str]]:
    """A client's all-JSON request body and headers: tensors as flat "data" lists (each float32
    written as Python writes the float, as tritonclient's JSON does), outputs asked as JSON."""
    entries = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array.dtype),
            "data": array.ravel().tolist(),
        }
        for name, array in inputs.items()
    ]
    doc = {"inputs": entries, "outputs": [{"name": n} for n in outputs]}
    return json.dumps(doc, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
