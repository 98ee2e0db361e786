"""A tiny STN-shaped ONNX model (logits, theta, warped) built node by node: no export needed."""

from __future__ import annotations

import numpy as np
import pytest


def build_toy_onnx(path, seed: int = 0) -> None:
    """input [N,1,8,8] -> logits [N,10], theta [N,2,3], warped [N,1,8,8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((64, 6)).astype(np.float32) * 0.1, "wt"),
        numpy_helper.from_array(np.array([1, 0, 0, 0, 1, 0], np.float32), "bt"),
        numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "theta_shape"),
        numpy_helper.from_array(np.array([0.5], np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        helper.make_node("Gemm", ["flat", "wt", "bt"], ["t6"]),
        helper.make_node("Reshape", ["t6", "theta_shape"], ["theta"]),
        helper.make_node("Mul", ["input", "half"], ["half_x"]),
        helper.make_node("Tanh", ["half_x"], ["warped"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "toy_stn",
        [helper.make_tensor_value_info("input", f, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", f, ["N", 10]),
            helper.make_tensor_value_info("theta", f, ["N", 2, 3]),
            helper.make_tensor_value_info("warped", f, ["N", 1, 8, 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy-stn.onnx"
    build_toy_onnx(path)
    return path


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on right now, for a server started as a subprocess."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def triton_protos():
    """Triton's protobuf modules as tritonclient ships them: (model_config_pb2, service_pb2).

    With the grpc extra they import normally. Without grpcio, ``tritonclient.grpc`` refuses to
    import, so the generated modules are loaded from its folder under a stand-in package.
    """
    import importlib.util
    import os
    import sys
    import types

    import tritonclient

    try:
        from tritonclient.grpc import model_config_pb2, service_pb2

        return model_config_pb2, service_pb2
    except (ImportError, RuntimeError):
        pass
    folder = os.path.join(os.path.dirname(tritonclient.__file__), "grpc")
    package = types.ModuleType("tritonclient.grpc")
    package.__path__ = [folder]
    saved = {k: sys.modules.get(k) for k in ("tritonclient.grpc",)}
    sys.modules["tritonclient.grpc"] = package
    try:
        loaded = []
        for name in ("model_config_pb2", "service_pb2"):
            full = f"tritonclient.grpc.{name}"
            spec = importlib.util.spec_from_file_location(full, os.path.join(folder, name + ".py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            setattr(package, name, module)
            spec.loader.exec_module(module)  # service_pb2 imports model_config_pb2 from package
            loaded.append(module)
    finally:
        for key, value in saved.items():  # the stand-in package must not outlive the loading
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return tuple(loaded)


@pytest.fixture(scope="session")
def model_config_pb2(triton_protos):
    """Triton's ModelConfig protobuf module, as tritonclient ships it."""
    return triton_protos[0]
