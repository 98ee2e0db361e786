"""Find the node that makes an exported model disagree with PyTorch (for failed verifications).

Two questions, in order: does the backend run a node differently from ONNX's reference
implementation (every intermediate marked as an output, Polygraphy's "mark all")? If not, the
graph itself differs from PyTorch: is the first GridSample's image already different from
PyTorch's warped image (grid or sampler export), or only what follows it (the classifier)?
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx.version_converter
from torch import nn

from stn_deploy.export.errors import ExportError
from stn_deploy.export.tolerances import Tolerance

__all__ = ["locate", "first_divergent_node"]


def _mark_all(path: str) -> onnx.ModelProto:
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, OnnxFromPath
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        return ModifyOutputs(OnnxFromPath(path), outputs=constants.MARK_ALL)()


def _close(ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> tuple[bool, float]:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return False, float("inf")
    if ref.dtype.kind not in "fc" or ref.size == 0:
        return bool(np.array_equal(ref, got)), 0.0
    err = np.abs(ref - got)
    bound = tol.atol + tol.rtol * np.abs(ref)
    finite = np.isfinite(ref) & np.isfinite(got)
    return bool((err[finite] <= bound[finite]).all()), float(err[finite].max(initial=0.0))


def _feeds(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    elem = model.graph.input[0].type.tensor_type.elem_type
    dtype = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
    return {model.graph.input[0].name: x.astype(dtype)}


def first_divergent_node(path: str, x: np.ndarray, tol: Tolerance) -> str | None:
    """The first node whose ONNX Runtime output differs from onnx.reference, or None."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    marked = _mark_all(path)
    feeds = _feeds(marked, x)
    session = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds)))
    # onnx.reference implements GridSample with the opset-20 mode names only.
    reference = ReferenceEvaluator(onnx.version_converter.convert_version(marked, 20))
    want = dict(zip(reference.output_names, reference.run(None, feeds)))
    for node in marked.graph.node:
        for out in node.output:
            if out in got and out in want:
                ok, err = _close(want[out], got[out], tol)
                if not ok:
                    return (
                        f"node {node.name or out!r} ({node.op_type}) output {out!r}: ONNX Runtime "
                        f"differs from the ONNX reference implementation by {err:.3g}"
                    )
    return None


def _gridsample_vs_torch(model: nn.Module, path: str, x: np.ndarray, tol: Tolerance) -> str:
    import onnxruntime as ort

    from stn_deploy.export.verify import _torch_outputs

    onnx_model = onnx.load(path, load_external_data=False)
    samplers = [n for n in onnx_model.graph.node if n.op_type == "GridSample"]
    if not samplers:
        return "the graph holds no GridSample node; compare the sampler nodes by hand"
    node = samplers[0]
    marked = _mark_all(path)
    session = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, _feeds(marked, x))))
    try:
        torch_warped = _torch_outputs(model, x, ["logits", "warped"], len(x))["warped"]
    except ExportError as exc:  # a model without a sampler has no image to compare
        return f"could not record PyTorch's warped image ({exc}); inspect {node.name!r}"
    onnx_warped = got[node.output[0]]
    ok, err = _close(torch_warped, onnx_warped, tol)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    if not ok and torch_warped.shape == onnx_warped.shape:
        differ = int((np.abs(torch_warped - onnx_warped) > tol.atol).sum())
        if attrs.get("mode") == "nearest" and differ <= max(1, torch_warped.size // 1000):
            return (
                f"GridSample node {node.name!r} {attrs}: {differ} of {torch_warped.size} "
                "pixels differ from PyTorch: grid points within float rounding of a pixel "
                "boundary picked the neighbour pixel (nearest mode), not an export error; "
                "bilinear sampling does not have this discontinuity"
            )
    if not ok:
        return (
            f"GridSample node {node.name!r} {attrs}: its image differs from PyTorch's "
            f"F.grid_sample output by {err:.3g}; the grid generator or sampler export is wrong"
        )
    return (
        f"the first GridSample ({node.name!r}) matches PyTorch (err {err:.3g}); the difference "
        "arises after the sampler, in the classifier head"
    )


def locate(model: nn.Module, path: str, x: np.ndarray, tol: Tolerance, backend: str) -> str:
    """One sentence naming the suspect node (or what to run where it cannot be named here)."""
    if backend != "ort":
        return (
            f"the {backend} backend cannot mark intermediates here; localise with: polygraphy "
            f"run {path} --trt --onnxrt --trt-outputs mark all --onnx-outputs mark all"
        )
    onnx_model = onnx.load(path, load_external_data=False)
    if any(imp.domain not in ("", "ai.onnx") for imp in onnx_model.opset_import):
        return "the graph holds custom-domain nodes the reference cannot run; check them first"
    if importlib.util.find_spec("polygraphy") is None:
        return "install polygraphy (pip install polygraphy) to locate the suspect node"
    found = first_divergent_node(path, x, tol)
    return found or _gridsample_vs_torch(model, path, x, tol)
