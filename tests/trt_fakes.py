"""What the fake tensorrt modules of the CPU tests share with the real bindings.

The fakes in tests/export/test_engine.py and tests/runtime/test_trt_session.py take their enum
values, shapes (``Dims``), serialized engines (``IHostMemory``) and ``nptype`` from here, per
TensorRT version. tests/test_trt_api.py checks every enum value and ``nptype`` answer below,
and every public name of every fake class (``REAL`` says which real class it stands for), against
the real TensorRT 10.16 and 11.4 bindings and TensorRT-RTX 1.7.
"""

from __future__ import annotations

import enum

import numpy as np

# The real releases the facts below were checked against (tests/test_trt_api.py).
RELEASES = {"10": "10.16.1.11", "11": "11.4.0.106", "rtx": "1.7.1.116"}


def target_of(version: str, module: str = "tensorrt") -> str:
    """'10.3.0' -> '10'; '11.0.0' -> '11'; TensorRT-RTX -> 'rtx'."""
    return "rtx" if module == "tensorrt_rtx" else version.split(".")[0]


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


def builder_flag(target: str) -> type[enum.IntEnum]:
    """The BuilderFlag members the build uses: 11.x and TensorRT-RTX have no FP16."""
    names = ["TF32", "VERSION_COMPATIBLE"] + (["FP16"] if target == "10" else [])
    return enum.IntEnum("BuilderFlag", names)  # values differ per release: names only


def network_flag(target: str) -> type[enum.IntEnum]:
    """STRONGLY_TYPED is bit 1 on 10.x (bit 0 is the deprecated EXPLICIT_BATCH), bit 0 after."""
    return enum.IntEnum("NetworkDefinitionCreationFlag",
                        {"STRONGLY_TYPED": 1 if target == "10" else 0})  # fmt: skip


NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
         DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_,
         DataType.UINT8: np.uint8}  # fmt: skip


def nptype(dtype: DataType):
    """As trt.nptype: numpy's type, TypeError for BF16, FP8, INT4, FP4 and E8M0."""
    if dtype not in NUMPY:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return NUMPY[dtype]


class Dims(tuple):
    """As trt.Dims: a sequence of ints (``tuple(dims)`` and indexing work)."""

    REAL = "Dims"


class HostMemory:
    """As trt.IHostMemory: the serialized engine; ``bytes(mem)`` copies it."""

    REAL = "IHostMemory"

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def __bytes__(self) -> bytes:
        return self._data


def compute_capability() -> type[enum.IntEnum]:
    """TensorRT-RTX's ComputeCapability (no SM90)."""
    return enum.IntEnum("ComputeCapability", {"NONE": 0, "CURRENT": 1, "SM75": 75, "SM80": 80,
                                              "SM86": 86, "SM89": 89, "SM120": 120,
                                              "SM121": 121})  # fmt: skip
