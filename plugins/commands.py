"""``stn-deploy plugins build | info``: build the GridSample plugin library and say where it is."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``plugins`` command group."""
    parser = subparsers.add_parser("plugins", help="build and inspect the GridSample plugin")
    sub = parser.add_subparsers(dest="plugins_command", metavar="ACTION")
    b = sub.add_parser("build", help="build kernels, TensorRT plugin and CPU library with CMake")
    b.add_argument("--arch", default=None,
                   help="CUDA architectures, e.g. '80;86;90' (default: 75;80;86;89;90)")
    b.add_argument("--tensorrt-root", default=None,
                   help="TensorRT folder with include/NvInferRuntime.h (default: $TENSORRT_ROOT, "
                        "then the usual install locations)")
    b.add_argument("--build-dir", default=None, help="build folder (default: plugins/build)")
    b.add_argument("--cpu-only", action="store_true", help="skip the CUDA kernels and the plugin")
    b.add_argument("-j", "--jobs", type=int, default=None, help="parallel build jobs")
    b.set_defaults(func=_build)
    i = sub.add_parser("info", help="plugin names, version, fields and where the libraries are")
    i.set_defaults(func=_info)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from stn_deploy.plugins.build import build

    result = build(args.build_dir, archs=args.arch, tensorrt_root=args.tensorrt_root,
                   cuda=not args.cpu_only, jobs=args.jobs)
    for note in result.notes:
        print(note)
    print(f"CPU library:      {result.cpu_library}")
    print(f"kernels library:  {result.kernels_library or 'not built (no nvcc, or --cpu-only)'}")
    missing = "not built (no TensorRT headers; pass --tensorrt-root)"
    print(f"TensorRT plugin:  {result.plugin or missing}")
    if result.plugin:
        print(f"load it with: trtexec --dynamicPlugins={result.plugin} ... or "
              f"trt.get_plugin_registry().load_library('{result.plugin}')")
    if result.autoload:
        print(f"Triton autoload:  {result.autoload} "
              f"(tritonserver --backend-config=tensorrt,plugins={result.autoload})")
    print(f"built: {result.summary()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from stn_deploy.plugins import names
    from stn_deploy.plugins.build import AUTOLOAD_LIBRARY, DEFAULT_BUILD_DIR, PLUGIN_LIBRARY
    from stn_deploy.plugins.cpu import SOURCE_DIR, cpu_cache_dir

    print(f"namespace {names.PLUGIN_NAMESPACE!r}, version {names.PLUGIN_VERSION!r}, "
          f"ONNX domain {names.ONNX_DOMAIN!r}")
    for op_type, fields in names.FIELDS.items():
        print(f"  {op_type}: {', '.join(fields)}")
    print(f"sources:          {SOURCE_DIR}")
    plugin = DEFAULT_BUILD_DIR / PLUGIN_LIBRARY
    built = plugin if plugin.is_file() else "not built: stn-deploy plugins build"
    print(f"TensorRT plugin:  {built}")
    autoload = DEFAULT_BUILD_DIR / AUTOLOAD_LIBRARY
    print(f"Triton autoload:  {autoload if autoload.is_file() else 'built with the plugin'}")
    cached = sorted(cpu_cache_dir().glob("libstn_gridsample_cpu-*.so"))
    print(f"CPU library:      {cached[-1] if cached else 'built on first use (needs g++)'}")
    return 0
