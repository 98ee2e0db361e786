"""Check an exported model against PyTorch: errors, top-1 agreement, accuracy, suspect node.

``verify(model, onnx_path, inputs, labels)`` runs the PyTorch module (fp32, the reference) and
the exported file on a backend from ``stn_deploy.runtime.open_session`` over the same inputs
and returns a :class:`VerifyResult` (``bool()`` = within the tolerance of the file's precision,
from :mod:`stn_deploy.export.tolerances`). When it fails, the suspect node is located by
running the graph with every intermediate marked as an output against ONNX's reference
implementation (a backend kernel that disagrees with the spec), and by comparing each
GridSample's output with PyTorch's warped image (an export that changed the semantics).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from stn_deploy.export.errors import VerificationError
from stn_deploy.export.tolerances import Tolerance, for_precision

__all__ = ["VerifyResult", "verify", "compare_logits", "load_test_split", "random_inputs"]

SUSPECT_SAMPLES = 4  # samples pushed through the reference evaluator when hunting a node


@dataclass(frozen=True)
class VerifyResult:
    """Parity of one exported model with PyTorch; ``bool()`` says whether it is in tolerance."""

    passed: bool
    max_abs_err: float
    max_rel_err: float
    top1_agreement: float
    accuracy_torch: float | None
    accuracy_backend: float | None
    tolerance: Tolerance
    n: int
    backend: str
    model: str = ""
    precision: str = "fp32"
    suspect: str | None = None
    outputs: dict[str, float] = field(default_factory=dict)  # output name -> max abs err

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2%}"

        verdict = "PASS" if self.passed else "FAIL"
        line = (
            f"verify {verdict} {self.backend}/{self.precision} n={self.n}: "
            f"max_abs_err={self.max_abs_err:.3g} max_rel_err={self.max_rel_err:.3g} "
            f"top1_agreement={self.top1_agreement:.2%} accuracy torch={pct(self.accuracy_torch)} "
            f"{self.backend}={pct(self.accuracy_backend)} (tolerance {self.tolerance.describe()})"
        )
        return line + (f"; suspect: {self.suspect}" if self.suspect else "")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["tolerance"] = asdict(self.tolerance)
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def compare_logits(
    ref: np.ndarray, got: np.ndarray, tol: Tolerance
) -> tuple[bool, float, float, float]:
    """(within tolerance, max abs err, max rel err, top-1 agreement) of two [N, K] arrays."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise VerificationError(f"output shapes differ: PyTorch {ref.shape}, backend {got.shape}")
    diff = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max()) if diff.size else 0.0
    within = finite and bool((diff <= tol.atol + tol.rtol * np.abs(ref)).all())
    top1 = float((ref.argmax(-1) == got.argmax(-1)).mean()) if ref.ndim == 2 else 1.0
    if not finite:
        max_abs = max_rel = float("inf")
    return within and top1 >= tol.min_top1, max_abs, max_rel, top1


def _torch_outputs(model: nn.Module, x: np.ndarray, names, batch_size: int) -> dict:
    from stn_deploy.export.onnx_export import _ExportWrapper

    extras = [n for n in names if n != "logits"]
    wrapper = _ExportWrapper(model.float().eval(), extras).eval()
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in ("logits", *extras)}
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = wrapper(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
            out = out if isinstance(out, tuple) else (out,)
            for name, value in zip(chunks, out):
                chunks[name].append(value.float().numpy())
    return {n: np.concatenate(v) for n, v in chunks.items()}


def _has_plugin_domain(path: str) -> bool:
    from stn_deploy.export.contract import PLUGIN_DOMAIN

    model = onnx.load(path, load_external_data=False)
    return any(imp.domain == PLUGIN_DOMAIN for imp in model.opset_import)


def _open(path: str, backend: str, options: dict):
    from stn_deploy.runtime import open_session

    options = dict(options)
    if backend == "ort" and _has_plugin_domain(path):
        try:
            from stn_deploy.plugins import ort_ops
        except ImportError as exc:
            raise VerificationError(
                f"{path} holds stn-domain plugin nodes, and the ONNX Runtime custom-op library "
                f"is not available here ({exc}); verify the standard flavour instead"
            ) from exc
        options["session_hooks"] = [*options.get("session_hooks", ()), ort_ops.register]
    return open_session(path, backend, **options)


def _backend_outputs(session, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    dtype = np.dtype(session.inputs[0].dtype)
    name = session.inputs[0].name
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        out = session.infer({name: x[start : start + batch_size].astype(dtype)})
        for key, value in out.items():
            chunks.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return float((logits.argmax(-1) == np.asarray(labels)).mean())


def verify(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    backend: str = "ort",
    tolerance: Tolerance | None = None,
    batch_size: int = 256,
    session_options: dict | None = None,
    locate: bool = True,
) -> VerifyResult:
    """Compare ``model`` (PyTorch, fp32) and ``onnx_path`` on ``backend`` over ``inputs``."""
    path = os.fspath(onnx_path)
    if not Path(path).is_file():
        raise VerificationError(f"no model file at {path!r}; export it first")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    with _open(path, backend, session_options or {}) as session:
        # an fp16 TensorRT-10 engine built with the builder flag keeps fp32 I/O: its sidecar
        # (session.precision) is what says it computes in fp16
        precision = getattr(session, "precision", None) or (
            "fp16" if session.inputs[0].dtype == "float16" else "fp32"
        )
        tol = tolerance or for_precision(precision)
        got = _backend_outputs(session, x, batch_size)
    ref = _torch_outputs(model, x, [n for n in got if n in ("logits", "theta", "warped")],
                         batch_size)
    if "logits" not in got:
        raise VerificationError(f"{path} has no output named 'logits' (outputs: {list(got)})")
    passed, max_abs, max_rel, top1 = compare_logits(ref["logits"], got["logits"], tol)
    per_output = {
        name: float(np.abs(got[name].astype(np.float64) - ref[name]).max())
        for name in ref
        if name in got and got[name].shape == ref[name].shape
    }
    suspect = None
    if not passed and locate:
        # hunt on the samples that disagree most, not on whichever come first
        per_sample = np.abs(got["logits"].astype(np.float64) - ref["logits"]).reshape(len(x), -1)
        worst = np.sort(np.argsort(-per_sample.max(axis=1))[:SUSPECT_SAMPLES])
        suspect = locate_suspect(model, path, x[worst], tol, backend)
    return VerifyResult(
        passed=passed,
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        top1_agreement=top1,
        accuracy_torch=_accuracy(ref["logits"], labels),
        accuracy_backend=_accuracy(got["logits"], labels),
        tolerance=tol,
        n=len(x),
        backend=backend,
        model=path,
        precision=precision,
        suspect=suspect,
        outputs=per_output,
    )


def locate_suspect(model: nn.Module, path: str, x: np.ndarray, tol: Tolerance, backend: str):
    """Name the first node where the graph goes wrong, or say where to look."""
    from stn_deploy.export import suspects

    return suspects.locate(model, path, x, tol, backend)


def random_inputs(shape: tuple[int, ...], n: int = 64, seed: int | None = None) -> np.ndarray:
    """``n`` uniform [0, 1) images of shape (C, H, W): the inputs for a user module."""
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape[-3:]), dtype=np.float32)


def load_test_split(dataset: str, distortion: str, limit: int | None = None):
    """(images [N,C,H,W] float32, labels [N] int64) of a checkpoint's distorted test split."""
    try:
        from stn_deploy.models.data import load_split
    except ImportError as exc:
        raise VerificationError(
            f"the data module is not available ({exc}); verify with --random-inputs instead"
        ) from exc
    split = load_split(dataset, distortion, "test")
    if isinstance(split, dict):
        images, labels = split["images"], split["labels"]
    elif isinstance(split, (tuple, list)):
        images, labels = split[0], split[1]
    else:
        images, labels = split.images, split.labels
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64)
