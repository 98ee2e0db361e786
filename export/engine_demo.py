"""The demo's TensorRT step: is TensorRT usable here, and do both flavours' engines match PyTorch?

``stn-deploy demo`` and ``bench/trt_check.py`` call it; it builds through
:func:`stn_deploy.export.engine.build_engine` and runs through the runtime's TensorRT session.
Without TensorRT or a GPU it says why instead of failing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from stn_deploy.export.engine import EngineBuildError, build_engine, inspect_onnx

__all__ = ["trt_available", "demo_trt_step"]


def trt_available(device: int = 0) -> tuple[bool, str]:
    """(True, "TensorRT x on GPU") when engines can be built and run here, else (False, why)."""
    from stn_deploy.runtime.session import BackendUnavailableError
    from stn_deploy.runtime.trt_module import flavour_of, import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailableError as exc:
        return False, str(exc)
    from stn_deploy.runtime.cuda_util import load_cuda

    label = flavour_of(trt).label
    try:
        gpu = load_cuda(device).info()
    except BackendUnavailableError as exc:
        return False, f"{label} is installed but {exc}"
    return True, f"{label} on {gpu.name} (sm {gpu.compute_capability})"


def demo_trt_step(
    onnx_paths: Mapping[str, str | os.PathLike],
    workdir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    batch: int = 64,
    report: Callable[[str], None] = lambda line: None,
) -> str:
    """Build an engine per flavour, compare it with PyTorch, return one summary line.

    ``onnx_paths`` maps flavour ("standard", "plugin") to an fp32 ONNX file. The reference is
    the PyTorch model of ``checkpoint`` when given, else ONNX Runtime on the standard flavour.
    Returns "TensorRT: skipped: <why>" when TensorRT or a GPU is absent; a plugin flavour whose
    library is not built is reported as skipped while the other flavour still runs.
    """
    from stn_deploy.export.tolerances import FP32
    from stn_deploy.export.verify import compare_logits
    from stn_deploy.runtime.backends import open_session

    ok, why = trt_available()
    if not ok:
        return f"TensorRT: skipped: {why}"
    workdir = Path(workdir)
    info = inspect_onnx(next(iter(onnx_paths.values())))
    x = np.random.default_rng(0).random((batch, *info.input_shape), dtype=np.float32)
    reference = _reference_logits(x, checkpoint, onnx_paths)
    parts = []
    for flavour, onnx_path in onnx_paths.items():
        engine = workdir / f"{Path(onnx_path).stem}.engine"
        try:
            build_engine(onnx_path, engine, max_batch=batch, opt_batch=batch, report=report)
        except EngineBuildError as exc:
            if "plugin library" not in str(exc):
                raise
            parts.append(f"{flavour}: skipped (plugin library not built: stn-deploy plugins build)")
            continue
        with open_session(engine, "trt") as sess:
            feeds = {sess.input_names[0]: x}
            out = sess.infer(feeds)["logits"]
            started = time.perf_counter()
            for _ in range(20):
                sess.infer(feeds)
            ms = (time.perf_counter() - started) / 20 * 1e3
        passed, max_abs, _, top1 = compare_logits(reference, out, FP32)
        verdict = "PASS" if passed else "FAIL"
        parts.append(f"{flavour} {verdict} max|err| {max_abs:.1e} top-1 {top1:.1%} "
                     f"{ms:.2f} ms/batch {batch}")  # fmt: skip
    return f"TensorRT ({why}): " + "; ".join(parts)


def _reference_logits(x: np.ndarray, checkpoint, onnx_paths: Mapping) -> np.ndarray:
    if checkpoint is not None:
        import torch

        from stn_deploy.export.loading import load_checkpoint
        from stn_deploy.export.verify import _torch_outputs

        model = load_checkpoint(checkpoint).model
        with torch.inference_mode():
            return _torch_outputs(model, x, ["logits"], batch_size=len(x))["logits"]
    from stn_deploy.runtime.backends import open_session

    standard = onnx_paths.get("standard")
    if standard is None:
        raise EngineBuildError("demo_trt_step needs a checkpoint or a standard-flavour ONNX")
    with open_session(standard, "ort") as sess:
        return sess.infer({sess.input_names[0]: x})["logits"]
