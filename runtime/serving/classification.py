"""Triton's classification extension: an output asked for as its top-k classes.

A request may ask for an output with ``"parameters": {"classification": k}`` (tritonclient:
``InferRequestedOutput(name, class_count=k)``). Instead of the raw scores, that output then comes
back as a BYTES tensor of shape [batch, k]: for every sample its k highest classes, highest first,
each as the string ``"<score>:<index>"`` (the score printed with six decimals, as Triton does;
Triton appends ``":<label>"`` when the model has a labels file, which these models do not).
Only outputs of shape [batch, classes] can be classified; k larger than the number of classes
gives all of them. A bad request raises ValueError, which the protocol answers with 400.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["class_count", "top_k", "bytes_tensor"]


def class_count(value: object, output: str) -> int:
    """The ``classification`` parameter of one requested output, checked (0: not asked)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"output {output!r}: parameter 'classification' must be a whole number of classes "
            f">= 1, got {value!r}; e.g. 3 for the top three"
        )
    return value


def top_k(scores: np.ndarray, k: int, output: str) -> np.ndarray:
    """[batch, classes] scores -> [batch, min(k, classes)] object array of b"score:index"."""
    if scores.ndim != 2:
        raise ValueError(
            f"output {output!r} has shape {list(scores.shape)}; classification needs "
            "[batch, classes]: ask for it on the logits"
        )
    k = min(k, scores.shape[1])
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, index, axis=1)
    out = np.empty(index.shape, dtype=object)
    for row in range(index.shape[0]):
        for col in range(k):
            out[row, col] = b"%f:%d" % (values[row, col], index[row, col])
    return out


def bytes_tensor(array: np.ndarray) -> bytes:
    """The binary form of a BYTES tensor: each element as a 4-byte little-endian length and
    its bytes, in row-major order."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.ravel())
