"""stn-deploy: take a trained Spatial Transformer Network to ONNX, TensorRT and a server.

The pipeline stages live in sibling packages: ``stn_deploy.models`` (architectures, data,
training, checkpoints), ``stn_deploy.export`` (ONNX export, contract check, verification),
``stn_deploy.plugins`` (the GridSample TensorRT plugin and its CPU build) and
``stn_deploy.runtime`` (inference sessions and the server). This package holds the CLI only.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
