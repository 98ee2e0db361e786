"""``stn-deploy build``: compile an exported ONNX file into a TensorRT engine + sidecar."""

from __future__ import annotations

import argparse

__all__ = ["register", "run_build"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build",
        help="build a TensorRT engine (+ JSON sidecar) from an exported ONNX file",
        description=(
            "Build a TensorRT engine from an ONNX file exported by `stn-deploy export`. "
            "Plugin-flavour graphs need the stn plugin library (--plugin-lib, $STN_PLUGIN_LIB, "
            "or plugins/build after `stn-deploy plugins build`). Needs TensorRT and a GPU, or "
            "TensorRT-RTX, which also builds without a GPU for --compute-capability."
        ),
    )
    parser.add_argument("onnx", help="the ONNX file (standard or plugin flavour)")
    parser.add_argument("--out", required=True, help="engine file to write (sidecar: OUT.json)")
    parser.add_argument("--plugin-lib", help="the stn GridSample plugin library (.so)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        help="default: the ONNX file's own (on TensorRT 11, fp16 needs the fp16 ONNX)",
    )
    parser.add_argument("--min-batch", type=_positive, help="profile minimum batch (default 1)")
    parser.add_argument("--opt-batch", type=_positive, help="batch TensorRT tunes for (default 32)")
    parser.add_argument("--max-batch", type=_positive, help="profile maximum batch (default 256)")
    parser.add_argument("--timing-cache", help="timing cache file to read and update")
    parser.add_argument(
        "--version-compatible",
        action="store_true",
        help="engine runs on newer TensorRT of the same major version (embeds the plugin)",
    )
    parser.add_argument("--workspace", type=_positive, metavar="MiB", help="builder workspace")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    parser.add_argument(
        "--tensorrt",
        choices=("tensorrt", "tensorrt-rtx"),
        help="which TensorRT to build with (default: the installed one, tensorrt first; "
        "tensorrt-rtx with --compute-capability)",
    )
    parser.add_argument(
        "--compute-capability",
        metavar="CC",
        help="TensorRT-RTX only: build ahead of time, without a GPU, for these GPUs, e.g. 8.6 "
        "or 8.6,8.9 (7.5, 8.0, 8.6, 8.9, 12.0, 12.1)",
    )
    parser.set_defaults(func=run_build)
    return parser


def build_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``build_engine`` that the parsed command line asks for."""
    return {
        "plugin_lib": args.plugin_lib,
        "precision": args.precision,
        "min_batch": args.min_batch,
        "opt_batch": args.opt_batch,
        "max_batch": args.max_batch,
        "timing_cache": args.timing_cache,
        "version_compatible": args.version_compatible,
        "workspace_mib": args.workspace,
        "device": args.device,
        "tensorrt": args.tensorrt.replace("-", "_") if args.tensorrt else None,
        "compute_capability": args.compute_capability,
    }


def run_build(args: argparse.Namespace) -> int:
    from stn_deploy.export.engine import build_engine

    result = build_engine(args.onnx, args.out, **build_options(args))
    print(f"sidecar: {result.sidecar_path}")
    return 0
