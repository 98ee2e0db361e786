"""MODEL -> an open Session: a checkpoint directory or shipped name, an ``.onnx`` file or an engine.

``stn-deploy serve`` and ``triton-repo`` take MODEL in any of those forms. Checkpoints are
exported to ONNX once, into a cache keyed by the checkpoint's bytes and the exporter's source,
with ``theta`` and ``warped`` beside ``logits`` when the model has a spatial transformer. The
backend is picked from the file and what this machine has (TensorRT with a GPU, else ONNX
Runtime on the CPU; PyTorch on request). On ONNX Runtime a checkpoint can be served in either
ONNX flavour; ``flavour="auto"`` times both on this machine and serves the faster
(:func:`choose_flavour`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from stn_deploy.errors import StnDeployError

__all__ = [
    "ServeError",
    "pick_backend",
    "model_name",
    "checkpoint_onnx",
    "transformer_outputs",
    "default_ort_threads",
    "choose_flavour",
    "is_checkpoint",
    "FLAVOURS",
    "resolve_model",
    "open_served",
]

log = logging.getLogger("stn_deploy.serve")

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
EXTRA_OUTPUTS = ("theta", "warped")
FLAVOURS = ("auto", "standard", "plugin")


class ServeError(StnDeployError):
    """MODEL cannot be served as asked."""


# -- MODEL -> Session ---------------------------------------------------------------------------
def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_backend(model: str | os.PathLike, backend: str = "auto") -> str:
    """'auto': an engine needs trt; otherwise trt when tensorrt and a GPU are here, else ort."""
    if backend != "auto":
        return backend
    if Path(model).suffix in ENGINE_SUFFIXES:
        return "trt"
    if importlib.util.find_spec("tensorrt") is not None and _has_gpu():
        return "trt"
    return "ort"


def model_name(model: str | os.PathLike) -> str:
    path = Path(model)
    return path.name if path.is_dir() or not path.suffix else path.stem


def _cache_dir() -> Path:
    root = os.environ.get("STN_DEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stn-deploy"
    )
    return Path(root) / "onnx"


def _checkpoint_dir(ckpt: str | os.PathLike) -> Path:
    from stn_deploy.models import CheckpointError, checkpoint_dir, shipped_checkpoints

    try:
        return checkpoint_dir(ckpt)
    except CheckpointError:
        shipped = ", ".join(shipped_checkpoints()) or "none shipped"
        raise ServeError(
            f"MODEL {ckpt} is neither a checkpoint directory, a shipped checkpoint "
            f"({shipped}), an .onnx file nor an engine"
        ) from None


def checkpoint_onnx(ckpt: str | os.PathLike, extra_outputs=None, flavour: str = "standard") -> Path:
    """Export a checkpoint to ONNX once; the cache key hashes its files and the exporter's.

    ``extra_outputs`` None: ``theta`` and ``warped`` beside ``logits`` when the model has a
    spatial transformer (:func:`transformer_outputs`), ``logits`` alone when it has none.
    ``flavour``: "standard" or "plugin" (the plugin nodes run on ONNX Runtime through our CPU
    kernels, :mod:`stn_deploy.runtime.ort_stages`).
    """
    if flavour not in FLAVOURS[1:]:
        raise ServeError(f"flavour {flavour!r} is not one of {FLAVOURS[1:]}")
    ckpt_dir = _checkpoint_dir(ckpt)
    digest = hashlib.sha256()
    for f in sorted(p for p in ckpt_dir.iterdir() if p.is_file()):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    # the exporter's own source too: a changed exporter must not serve a stale cached graph
    import stn_deploy.export

    for f in sorted(Path(stn_deploy.export.__file__).parent.glob("*.py")):
        digest.update(f.read_bytes())
    tag = "auto" if extra_outputs is None else "-".join(extra_outputs) or "logits"
    if flavour != "standard":
        tag += f"-{flavour}"
    out = _cache_dir() / f"{ckpt_dir.name}-{digest.hexdigest()[:16]}-{tag}.onnx"
    if not out.is_file():
        from stn_deploy.export.onnx_export import export_checkpoint

        if extra_outputs is None:
            from stn_deploy.models import load_model

            loaded = load_model(ckpt_dir)
            extra_outputs = transformer_outputs(loaded.model, loaded.input_shape)
        log.info("exporting %s to %s", ckpt_dir, out)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        export_checkpoint(ckpt_dir, tmp, extra_outputs=tuple(extra_outputs), flavour=flavour)
        os.replace(tmp, out)
    return out


def choose_flavour(ckpt: str | os.PathLike, threads: int | None, batch: int = 64,
                   min_time: float = 0.4) -> tuple[str, dict]:
    """The faster ONNX flavour of a checkpoint on this machine, and the timings that decided.

    Both flavours are exported (cached) and timed in interleaved rounds at batch 1 and at
    ``batch`` (a server's largest batch); the faster at ``batch`` wins (under load a server runs
    full batches; at batch 1 the two differ by tens of microseconds either way), the standard
    flavour on a tie. A plugin flavour that cannot be exported or run here is reported and the
    standard flavour served.
    """
    import numpy as np

    from stn_deploy.runtime.bench import measure_interleaved
    from stn_deploy.runtime.ort import OrtSession

    paths = {"standard": checkpoint_onnx(ckpt)}
    try:
        paths["plugin"] = checkpoint_onnx(ckpt, flavour="plugin")
    except Exception as exc:  # noqa: BLE001 - the standard flavour still serves
        return "standard", {"plugin": f"unavailable: {type(exc).__name__}: {exc}"}
    sessions = {f: OrtSession(p, threads=threads or default_ort_threads()).open()
                for f, p in paths.items()}
    try:
        shape = sessions["standard"].inputs[0].shape[1:]
        timings: dict = {}
        for b in sorted({1, max(1, int(batch))}):
            x = np.random.default_rng(0).random((b, *shape), dtype=np.float32)
            got = measure_interleaved(sessions, x, min_time=min_time)
            timings[b] = {f: (v.p50_ms if not isinstance(v, str) else v) for f, v in got.items()}
    finally:
        for session in sessions.values():
            session.close()
    at_batch = timings[max(timings)]
    if isinstance(at_batch["plugin"], str):
        return "standard", timings
    return ("plugin" if at_batch["plugin"] < at_batch["standard"] else "standard"), timings


def transformer_outputs(model, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """``("theta", "warped")`` when ``model`` has a spatial transformer that yields them, else ().

    A model has them when it contains a stn_deploy ``Warp`` (every STN of the zoo), or when its
    ``forward(x, return_aux=True)`` returns ``(logits, {"theta": ..., "warped": ...})`` (one
    forward pass on zeros tells). Baselines such as ``cnn`` have neither and serve ``logits``.
    """
    import torch

    from stn_deploy.models.sampling import Warp

    if any(isinstance(m, Warp) for m in model.modules()):
        return EXTRA_OUTPUTS
    if not _takes_return_aux(model):
        return ()
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, *input_shape[-3:]), return_aux=True)
    aux = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else None
    return EXTRA_OUTPUTS if isinstance(aux, dict) and set(EXTRA_OUTPUTS) <= set(aux) else ()


def _takes_return_aux(model) -> bool:
    import inspect

    try:
        return "return_aux" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def default_ort_threads(workers: int = 1) -> int:
    """All cores but one per server process: each event loop decoding and encoding requests
    needs its own; what is left is shared among the ``workers`` processes.

    Measured on 2 cores (bench/load_bench.py raw runs): one intra-op thread costs 68 us of CPU
    per sample at batch 16-256, two non-spinning threads 76-87 us, two spinning ones 131-144 us;
    under load the server's CPU per request is what bounds its throughput.
    """
    return max(1, ((os.cpu_count() or 2) - workers) // workers)


def _ort_hooks():
    # Do not let ORT's idle intra-op threads spin: the HTTP event loop needs those cycles
    # between batches (measured in bench/load_bench.py).
    def no_spin(options) -> None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    return [no_spin]


def _torch_session(ckpt: str | os.PathLike, threads: int | None):
    from stn_deploy.models import load_model
    from stn_deploy.runtime.session import TensorSpec
    from stn_deploy.runtime.torch_session import TorchSession

    loaded = load_model(ckpt)
    spec = TensorSpec("input", (None, *loaded.input_shape), "float32")
    extras = transformer_outputs(loaded.model, loaded.input_shape)
    module = _with_extras(loaded.model) if extras else loaded.model
    return TorchSession(module, [spec], ("logits", *extras), threads=threads)


def _with_extras(model):
    """model(x) -> (logits, theta, warped), as the ONNX export names them.

    The zoo's protocol first (``forward(x, return_aux=True)`` -> ``(logits, {theta, warped})``,
    warped in raw pixel units, exactly what the exporter reads); otherwise the first Warp's
    outputs (:func:`transformer_outputs` has checked that one of the two is there).
    """
    import torch

    from stn_deploy.models.sampling import Warp

    takes_aux = _takes_return_aux(model)

    class WithExtras(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.seen: list = []
            for m in model.modules():
                if isinstance(m, Warp):
                    m.register_forward_hook(lambda _m, _a, out: self.seen.append(out))

        def forward(self, x):
            self.seen = []
            if takes_aux:
                logits, aux = self.model(x, return_aux=True)
                return logits, aux["theta"], aux["warped"]
            out = self.model(x)
            logits = out["logits"] if isinstance(out, dict) else out
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            if not self.seen:
                raise ServeError("the model has no stn_deploy Warp: theta/warped unavailable")
            warped, theta = self.seen[0]
            return logits, theta, warped

    return WithExtras()


def is_checkpoint(model: str | os.PathLike) -> bool:
    """MODEL names a checkpoint (a directory, or a shipped name) rather than a file."""
    path = Path(model)
    return path.is_dir() or (not path.suffix and not path.exists())


def resolve_model(model: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                  flavour: str = "standard", max_batch: int = 64):
    """(name, open Session, backend) for MODEL: a checkpoint dir, an .onnx file or an engine.

    ``flavour`` picks the ONNX flavour a checkpoint is served in on ONNX Runtime ("auto":
    :func:`choose_flavour` at ``max_batch``); an ONNX file or engine is served as it is.
    """
    if flavour not in FLAVOURS:
        raise ServeError(f"--flavour must be one of {FLAVOURS}, got {flavour!r}")
    from stn_deploy.runtime.backends import open_session

    path = Path(model)
    backend = pick_backend(model, backend)
    is_ckpt = is_checkpoint(model)
    if backend == "torch":
        if not is_ckpt:
            raise ServeError(f"--backend torch needs a checkpoint directory, got {model}")
        return model_name(model), _torch_session(model, threads).open(), backend
    if path.suffix in ENGINE_SUFFIXES and backend != "trt":
        raise ServeError(f"{model} is a TensorRT engine; serve it with --backend trt")
    if backend == "trt" and path.suffix not in ENGINE_SUFFIXES:
        raise ServeError(
            f"--backend trt serves an engine; build one first: stn-deploy export {model} "
            "--out model.onnx && stn-deploy build model.onnx --out model.engine"
        )
    if is_ckpt:
        if flavour == "auto" and backend == "ort":
            flavour, timings = choose_flavour(model, threads, max_batch)
            log.info("flavour auto: serving the %s flavour (p50 ms by batch: %s)", flavour, timings)
        path = checkpoint_onnx(model, flavour="standard" if flavour == "auto" else flavour)
    elif not path.is_file():
        raise ServeError(f"MODEL {model} does not exist (a checkpoint dir, .onnx or engine)")
    options = {}
    if backend == "ort":
        options = {"threads": threads or default_ort_threads(), "session_hooks": _ort_hooks()}
    return model_name(model), open_session(path, backend, **options), backend


def open_served(model: str, backend: str, threads: int | None, name: str | None,
                flavour: str = "standard"):
    """A ServedModel for MODEL, opened here (each ``--workers`` process calls this itself)."""
    from stn_deploy.runtime.serving.config import ServedModel

    resolved_name, session, _ = resolve_model(model, backend, threads, flavour)
    return ServedModel(name or resolved_name, session)
