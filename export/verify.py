"""Check an exported model against PyTorch: per-output errors against float64, top-1, accuracy.

``verify(model, onnx_path, inputs, labels)`` runs the exported file on a backend from
``stn_deploy.runtime.open_session``, and the PyTorch module in float64 (the ground truth) and in
float32 (:mod:`stn_deploy.export.reference`), over the same inputs. Each output is judged with
the statistic that fits it (:mod:`stn_deploy.export.judge`) under the policy of the file's
precision (:mod:`stn_deploy.export.tolerances`): in fp32 a backend passes when its error is
within a stated multiple of PyTorch fp32's own error. ``bool(result)`` says whether every output
passed. When one fails, :mod:`stn_deploy.export.suspects` names the node where it goes wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from stn_deploy.export.errors import VerificationError
from stn_deploy.export.judge import OutputCheck, judge
from stn_deploy.export.reference import Reference, reference_outputs
from stn_deploy.export.tolerances import Tolerance, for_precision, with_fixed_bound

__all__ = ["VerifyResult", "verify", "compare_logits", "load_test_split", "random_inputs"]

SUSPECT_SAMPLES = 4  # samples pushed through the node-by-node comparison when hunting a node
OUTPUTS = ("logits", "theta", "warped")


@dataclass(frozen=True)
class VerifyResult:
    """Parity of one exported model with PyTorch; ``bool()`` says whether every output passed."""

    passed: bool
    max_abs_err: float  # logits against the reference
    max_rel_err: float
    top1_agreement: float  # logits, all samples
    accuracy_torch: float | None
    accuracy_backend: float | None
    tolerance: Tolerance
    n: int
    backend: str
    model: str = ""
    precision: str = "fp32"
    suspect: str | None = None
    checks: tuple[OutputCheck, ...] = ()
    policy: tuple[str, ...] = ()  # precision-policy violations found in the graph itself
    reference: str = "float64"  # what the errors are measured against
    reference_note: str = ""
    outputs: dict[str, float] = field(default_factory=dict)  # output name -> max abs err

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2%}"

        verdict = "PASS" if self.passed else "FAIL"
        parts = [f"verify {verdict} {self.backend}/{self.precision} n={self.n} against PyTorch "
                 f"{self.reference}: " + "; ".join(c.summary() for c in self.checks)]
        parts += [f"precision policy: {p}" for p in self.policy]
        if self.accuracy_torch is not None:
            parts.append(f"accuracy torch={pct(self.accuracy_torch)} "
                         f"{self.backend}={pct(self.accuracy_backend)}")
        parts.append(f"(tolerance {self.tolerance.describe()})")
        if self.reference_note:
            parts.append(f"[{self.reference_note}]")
        line = " ".join(parts)
        return line + (f"; suspect: {self.suspect}" if self.suspect else "")

    def to_dict(self) -> dict:
        record = asdict(self)
        record["tolerance"] = asdict(self.tolerance)
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def compare_logits(
    ref: np.ndarray, got: np.ndarray, tol: Tolerance
) -> tuple[bool, float, float, float]:
    """(within the fixed atol/rtol, max abs err, max rel err, top-1 agreement) of [N, K] arrays.

    The fixed-bound comparison for engines run without a PyTorch module at hand.
    """
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


def _checks(ref: Reference, got: dict[str, np.ndarray], tol: Tolerance
            ) -> tuple[OutputCheck, ...]:
    fp32 = ref.float32 if ref.dtype == "float64" else None
    return tuple(judge(name, ref.truth[name], got[name], None if fp32 is None else fp32[name], tol)
                 for name in ref.truth if name in got)


def _policy(path: str) -> tuple[str, ...]:
    """The precision policy checked on the graph: no grid arithmetic in fp16."""
    from stn_deploy.export.contract import check_model

    return tuple(f"{f.node}: {f.problem}" for f in check_model(path).findings
                 if f.rule == "fp16-geometry")


def verify(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    backend: str = "ort",
    tolerance: Tolerance | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_size: int = 256,
    session_options: dict | None = None,
    locate: bool = True,
) -> VerifyResult:
    """Compare ``onnx_path`` on ``backend`` with ``model`` (PyTorch) over ``inputs``.

    ``tolerance`` replaces the policy of the file's precision; ``atol``/``rtol`` replace its
    bound with a fixed one.
    """
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
        got = _backend_outputs(session, x, batch_size)
    if "logits" not in got:
        raise VerificationError(f"{path} has no output named 'logits' (outputs: {list(got)})")
    tol = with_fixed_bound(tolerance or for_precision(precision), atol, rtol)
    ref = reference_outputs(model, x, [n for n in got if n in OUTPUTS], batch_size)
    if ref.dtype != "float64" and tol.relative:  # no float64 run: PyTorch fp32 is the truth
        tol = replace(tol, name=f"{tol.name} (fixed, no float64 reference)", multiple=None)
    checks = _checks(ref, got, tol)
    logits = next(c for c in checks if c.name == "logits")
    _, _, max_rel, _ = compare_logits(ref.truth["logits"], got["logits"], tol)
    policy = _policy(path) if backend == "ort" else ()
    passed = all(c.passed for c in checks) and not policy
    suspect = None
    if not passed and locate:
        suspect = locate_suspect(model, path, x, tol, backend, ref, got)
    classes = logits.kind == "classes"
    return VerifyResult(
        passed=passed,
        max_abs_err=logits.max_abs,
        max_rel_err=max_rel,
        top1_agreement=logits.top1_all if logits.top1_all is not None else 1.0,
        accuracy_torch=_accuracy(ref.float32["logits"], labels) if classes else None,
        accuracy_backend=_accuracy(got["logits"], labels) if classes else None,
        tolerance=tol,
        n=len(x),
        backend=backend,
        model=path,
        precision=precision,
        suspect=suspect,
        checks=checks,
        policy=policy,
        reference=ref.dtype,
        reference_note=ref.note,
        outputs={c.name: c.max_abs for c in checks},
    )


def locate_suspect(model: nn.Module, path: str, x: np.ndarray, tol: Tolerance, backend: str,
                   ref: Reference, got: dict[str, np.ndarray]) -> str:
    """Name the node where the graph goes wrong, on the samples that disagree most."""
    from stn_deploy.export import suspects

    err = np.abs(got["logits"].astype(np.float64) - ref.truth["logits"]).reshape(len(x), -1)
    worst = np.sort(np.argsort(-err.max(axis=1))[:SUSPECT_SAMPLES])
    return suspects.locate(model, path, x[worst], tol, backend)


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
