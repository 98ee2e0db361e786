"""Export any STN (any nn.Module calling F.grid_sample) to ONNX, in two flavours and two precisions.

``torch.onnx.export(dynamo=True)`` at opset 18 with our custom translation table
(:mod:`stn_deploy.export.translation`), a batch dimension named ``batch`` that works at any size,
IR version 10, and the contract check run on every result. Tensor names are fixed: input
``input`` [N,C,H,W]; outputs ``logits`` then, on request, ``theta`` and ``warped`` (the first
spatial transformer's parameters and warped image).

The module is always traced in fp32; the other variants are graph passes over that graph, so
they work for any module the fp32 export works for:

- flavour ``plugin``: :func:`stn_deploy.export.plugin_flavour.to_plugin` turns every GridSample
  into a node of our TensorRT plugin, fused with its grid generator when the grid is affine or
  projective in a per-sample matrix;
- precision ``fp16``: :func:`stn_deploy.export.fp16.to_fp16` converts the graph to fp16 with fp16
  I/O (TensorRT 11 has no fp16 builder flag), except every grid generator and sampler, which stay
  fp32 from the transform parameters on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from stn_deploy.export import fp16, passes, plugin_flavour
from stn_deploy.export.contract import ContractReport, check_model
from stn_deploy.export.errors import ContractError, ExportError
from stn_deploy.export.fp16 import Fp16Report
from stn_deploy.export.plugin_flavour import FusionReport
from stn_deploy.export.translation import OPSET, standard_translation_table
from stn_deploy.models.sampling import Warp

__all__ = [
    "ExportResult",
    "FLAVOURS",
    "PRECISIONS",
    "EXTRA_OUTPUTS",
    "export_module",
    "export_checkpoint",
    "export_plain",
]

FLAVOURS = ("standard", "plugin")
PRECISIONS = ("fp32", "fp16")
EXTRA_OUTPUTS = ("theta", "warped")
INPUT_NAME = "input"
TRACE_BATCH = 2  # trace at batch 2 so no size-1 specialisation leaks into the graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, its flavour/precision, tensor names, contract, sha256."""

    path: Path
    flavour: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    opset: int
    contract: ContractReport
    sha256: str
    fusion: FusionReport | None = None  # plugin flavour: which warps became fused nodes
    fp16: Fp16Report | None = None  # fp16: what stayed fp32

    def summary(self) -> str:
        parts = [
            f"exported {self.path} ({self.flavour}, {self.precision}, opset {self.opset}, "
            f"input {self.input_names[0]}[batch,{','.join(map(str, self.input_shape))}] -> "
            f"{', '.join(self.output_names)})"
        ]
        parts += [r.summary() for r in (self.fusion, self.fp16) if r is not None]
        return "; ".join([*parts, self.contract.summary()])


class _Recorder(TorchFunctionMode):
    """Remembers the first warped image and theta of a forward pass (for extra outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.grid_sample:
            self.seen.setdefault("warped", out)
        elif func is F.affine_grid:
            self.seen.setdefault("theta", args[0] if args else kwargs["theta"])
        return out


class _ExportWrapper(nn.Module):
    """model(input) -> (logits, *extras) with the names the pipeline fixes."""

    def __init__(self, model: nn.Module, extra_outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.extra_outputs = tuple(extra_outputs)
        self._warp_seen: dict[str, torch.Tensor] = {}
        for module in model.modules():
            if isinstance(module, Warp):
                module.register_forward_hook(self._on_warp)

    def _on_warp(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) == 2:
            self._warp_seen.setdefault("warped", output[0])
            self._warp_seen.setdefault("theta", output[1])

    def forward(self, input: torch.Tensor):
        self._warp_seen = {}
        if not self.extra_outputs:
            return _logits(self.model(input))
        aux: dict[str, torch.Tensor] = {}
        recorder = _Recorder()
        with recorder:
            if _takes_return_aux(self.model):  # the zoo's protocol: (logits, {theta, warped})
                out, aux = self.model(input, return_aux=True)
            else:
                out = self.model(input)
        logits = _logits(out)
        # the model's own aux beats a Warp's outputs, which beat what F.* calls revealed
        seen = {**recorder.seen, **self._warp_seen, **aux}
        missing = [name for name in self.extra_outputs if name not in seen]
        if missing:
            raise ExportError(
                f"extra output(s) {missing} requested, but the model produced none: it calls "
                "neither F.grid_sample/F.affine_grid nor a stn_deploy Warp module"
            )
        return (logits, *(seen[name].to(input.dtype) for name in self.extra_outputs))


def _takes_return_aux(model: nn.Module) -> bool:
    try:
        return "return_aux" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ExportError(
        f"the model returned {type(out).__name__}; expected logits as a tensor, the first item "
        "of a tuple, or a dict with key 'logits'"
    )


def _validate(flavour: str, precision: str, extra_outputs: Sequence[str], shape) -> None:
    if flavour not in FLAVOURS:
        raise ExportError(f"flavour {flavour!r} is not one of {FLAVOURS}; e.g. flavour='standard'")
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {PRECISIONS}; e.g. 'fp16'")
    bad = [e for e in extra_outputs if e not in EXTRA_OUTPUTS]
    if bad:
        raise ExportError(f"unknown extra output(s) {bad}; choose from {EXTRA_OUTPUTS}")
    if len(shape) not in (3, 4) or any(int(d) <= 0 for d in shape):
        raise ExportError(f"input shape {tuple(shape)} must be (C,H,W) or (N,C,H,W), e.g. 1,28,28")


def _run_exporter(wrapper, example, output_names, table, opset) -> ir.Model:
    batch = torch.export.Dim("batch", min=1)
    # torchvision-missing notices and the optimizer's per-pass INFO lines are noise here
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    if not log.isEnabledFor(logging.DEBUG):
        for q in quiet:
            q.setLevel(logging.ERROR if q.name == "torch.onnx" else logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
            chatter = (
                contextlib.nullcontext()
                if log.isEnabledFor(logging.DEBUG)
                else contextlib.redirect_stdout(_Null())
            )
            with chatter:
                program = torch.onnx.export(
                    wrapper,
                    (example,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(output_names),
                    dynamic_shapes=({0: batch},),
                    custom_translation_table=table,
                    optimize=True,
                    verbose=False,
                )
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; keep its message
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return program.model


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def export_module(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | os.PathLike,
    *,
    flavour: str = "standard",
    precision: str = "fp32",
    extra_outputs: Sequence[str] = (),
    opset: int = OPSET,
) -> ExportResult:
    """Export ``model`` for inputs of ``input_shape`` (batch dim ignored: always dynamic).

    Writes ``out_path``, runs the contract check, and raises ContractError (after writing, so
    the file can be inspected) if the graph breaks the TensorRT contract.
    """
    _validate(flavour, precision, extra_outputs, input_shape)
    chw = tuple(int(d) for d in input_shape[-3:])
    model = copy.deepcopy(model).eval().float()
    output_names = ("logits", *extra_outputs)
    wrapper = _ExportWrapper(model, extra_outputs).eval()
    example = torch.randn(TRACE_BATCH, *chw)
    ir_model = _run_exporter(wrapper, example, output_names, standard_translation_table(), opset)
    passes.pin_ir_version(ir_model)
    ir_model.metadata_props.update(
        {"stn_deploy.flavour": flavour, "stn_deploy.precision": precision}
    )
    proto = ir.serde.serialize_model(ir_model)
    fusion = fp16_report = None
    if flavour == "plugin":
        proto, fusion = plugin_flavour.to_plugin(proto)
    if precision == "fp16":
        trainable = {name for name, p in wrapper.named_parameters() if p.requires_grad}
        proto, fp16_report = fp16.to_fp16(proto, trainable)
    proto.ir_version = min(proto.ir_version, passes.IR_VERSION)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString()
    out.write_bytes(data)
    report = check_model(proto)
    report = ContractReport(source=str(out), findings=report.findings)
    result = ExportResult(
        path=out,
        flavour=flavour,
        precision=precision,
        input_names=tuple(i.name for i in proto.graph.input),
        output_names=tuple(o.name for o in proto.graph.output),
        input_shape=chw,
        opset=opset,
        contract=report,
        sha256=hashlib.sha256(data).hexdigest(),
        fusion=fusion,
        fp16=fp16_report,
    )
    if not report:
        raise ContractError(f"{out} breaks the TensorRT contract:\n{report.format()}")
    return result


def export_checkpoint(ckpt_dir: str | os.PathLike, out_path: str | os.PathLike, **options):
    """Export the model of a checkpoint directory; options as for :func:`export_module`."""
    from stn_deploy.export.loading import load_checkpoint

    loaded = load_checkpoint(ckpt_dir)
    return export_module(loaded.model, loaded.input_shape, out_path, **options)


def export_plain(
    model: nn.Module, input_shape: tuple[int, ...], out_path: str | os.PathLike, opset: int = 20
) -> Path:
    """The baseline: plain ``torch.onnx.export(dynamo=True)`` at ``opset``, no custom table.

    Only the names and the dynamic batch match :func:`export_module`; no contract check (at
    opset 20 it fails it: GridSample modes linear/cubic). Used by the benchmark's comparison.
    """
    chw = tuple(int(d) for d in input_shape[-3:])
    wrapper = _ExportWrapper(copy.deepcopy(model).eval().float(), ()).eval()
    example = torch.randn(TRACE_BATCH, *chw)
    ir_model = _run_exporter(wrapper, example, ("logits",), None, opset)
    passes.pin_ir_version(ir_model)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(ir.serde.serialize_model(ir_model).SerializeToString())
    return out


def onnx_input_dtype(path: str | os.PathLike) -> str:
    """'float16' or 'float32': the element type of the model's first input."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    elem = model.graph.input[0].type.tensor_type.elem_type
    return "float16" if elem == onnx.TensorProto.FLOAT16 else "float32"
