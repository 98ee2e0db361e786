"""The ``stn-deploy`` command line: one parser, subcommands contributed by each package.

Each package has a ``commands`` module with ``register(subparsers)``; it only declares arguments
and imports its heavy dependencies inside the handler, so ``stn-deploy --help`` stays fast.
Handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from stn_deploy import __version__
from stn_deploy.errors import StnDeployError

# Order is the order of --help: the pipeline, then the tools around it.
COMMAND_MODULES = (
    "stn_deploy.models.commands",
    "stn_deploy.export.commands",
    "stn_deploy.plugins.commands",
    "stn_deploy.export.engine_commands",
    "stn_deploy.serve",
    "stn_deploy.bench",
    "stn_deploy.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full parser with every subcommand that is installed."""
    parser = argparse.ArgumentParser(
        prog="stn-deploy",
        description="Deploy Spatial Transformer Networks: train, export, verify, build, serve.",
    )
    parser.add_argument("--version", action="version", version=f"stn-deploy {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module, not a missing part
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stn-deploy`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StnDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
