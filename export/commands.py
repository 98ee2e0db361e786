"""The ``export``, ``check`` and ``verify`` subcommands (arguments here, work in the modules)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def _add_source(parser: argparse.ArgumentParser, positional_help: str) -> None:
    parser.add_argument("checkpoint", nargs="?", help=positional_help)
    parser.add_argument("--module", help="a user architecture as pkg.mod:Class")
    parser.add_argument("--kwargs", help="JSON constructor kwargs for --module")
    parser.add_argument("--weights", help=".safetensors or .pt state_dict for --module")
    parser.add_argument("--input-shape", help="C,H,W or N,C,H,W for --module, e.g. 1,1,28,28")


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint or a user module to ONNX")
    _add_source(p, "checkpoint directory (or --module ...)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--flavour", choices=("standard", "plugin"), default="standard")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--extra-outputs", default="", help="comma list of theta,warped")
    p.set_defaults(func=_export)

    p = sub.add_parser("check", help="check an ONNX file against the TensorRT contract")
    p.add_argument("model", help="ONNX file")
    p.set_defaults(func=_check)

    p = sub.add_parser("verify", help="compare an exported model with PyTorch")
    _add_source(p, "checkpoint directory (or --module ...)")
    p.add_argument(
        "onnx", metavar="MODEL", nargs="+",
        help="exported ONNX file(s); with --backend trt engine(s), e.g. the built-in-GridSample "
        "engine and the plugin engine side by side",
    )
    p.add_argument("--backend", default="ort", choices=("ort", "trt"))
    p.add_argument(
        "--plugin-lib", help="stn plugin library for trt (default: $STN_PLUGIN_LIB, plugins/build)"
    )
    p.add_argument("--limit", type=int, default=None, help="use the first N test samples")
    p.add_argument("--samples", type=int, default=64, help="random inputs for --module")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the --module random inputs (default: fresh)"
    )
    p.add_argument(
        "--atol", type=float, default=None,
        help="fixed absolute bound against PyTorch float64, in place of the precision's policy "
        "(fp32: within 4x PyTorch fp32's own error; see export/tolerances.py)",
    )
    p.add_argument("--rtol", type=float, default=None, help="fixed relative bound (with --atol)")
    p.add_argument("--json", action="store_true", help="print the result as JSON last")
    p.set_defaults(func=_verify)


def _source(args):
    """(model, input_shape, loaded-checkpoint or None) from the shared arguments."""
    from stn_deploy.export.errors import ExportError
    from stn_deploy.export.loading import load_checkpoint, load_user_module, parse_shape

    if args.module:
        shape = parse_shape(args.input_shape) if args.input_shape else None
        loaded = load_user_module(args.module, args.weights, args.kwargs, shape)
        return loaded.model, loaded.input_shape, None
    if not args.checkpoint:
        raise ExportError("give a checkpoint directory or --module pkg.mod:Class --weights FILE")
    loaded = load_checkpoint(args.checkpoint)
    shape = parse_shape(args.input_shape) if args.input_shape else loaded.input_shape
    return loaded.model, shape, loaded


def _export(args) -> int:
    from stn_deploy.export.onnx_export import export_module

    model, shape, _ = _source(args)
    extras = tuple(e for e in args.extra_outputs.split(",") if e)
    result = export_module(
        model,
        shape,
        args.out,
        flavour=args.flavour,
        precision=args.precision,
        extra_outputs=extras,
    )
    for finding in result.contract.findings:
        print(finding)
    print(result.summary())
    return 0


def _check(args) -> int:
    from stn_deploy.export.contract import check_model

    report = check_model(args.model)
    print(report.format())
    return 0 if report else 1


def _verify(args) -> int:
    from stn_deploy.export.errors import VerificationError
    from stn_deploy.export.verify import load_test_split, random_inputs, verify

    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:
            raise VerificationError(f"{flag} must be a number >= 0, e.g. {flag} 1e-4")
    model, shape, loaded = _source(args)
    labels = None
    if loaded is not None and loaded.dataset:
        inputs, labels = load_test_split(loaded.dataset, loaded.distortion, args.limit)
    else:
        inputs = random_inputs(shape, args.samples, seed=args.seed)
    options = {"plugin_lib": args.plugin_lib} if args.backend == "trt" and args.plugin_lib else {}
    results = []
    for path in args.onnx:
        result = verify(model, path, inputs, labels, backend=args.backend, session_options=options,
                        atol=args.atol, rtol=args.rtol)
        label = path
        if args.backend == "trt":
            from stn_deploy.runtime.engine_meta import describe_engine

            label = describe_engine(path)  # "trt built-in GridSample fp32" / "trt plugin fp16"
        prefix = f"{label}: " if len(args.onnx) > 1 or args.backend == "trt" else ""
        print(f"{prefix}{result.summary()}", file=sys.stderr if args.json else sys.stdout)
        results.append(result)
    if args.json:
        out = results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results]
        print(json.dumps(out, sort_keys=True))
    return 0 if all(results) else 1
