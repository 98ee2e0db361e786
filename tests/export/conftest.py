"""Shared by the export tests: the realistic STN library, exported once per session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # realistic_stns is a plain module of tests/, as a user's is

import realistic_stns as R  # noqa: E402

VARIANTS = [("standard", "fp32"), ("plugin", "fp32"), ("standard", "fp16"), ("plugin", "fp16")]
CASES = {c.name: c for c in R.CASES}


def cli_source(case: R.Case, weights: Path) -> list[str]:
    """The CLI arguments naming a realistic module as a user names their own."""
    return ["--module", f"realistic_stns:{case.cls.__name__}", "--kwargs", json.dumps(case.kwargs),
            "--weights", str(weights), "--input-shape", ",".join(map(str, case.input_shape))]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Lazily: (case name, flavour, precision, capsys) -> (ONNX path, export stdout), via the
    CLI; every file is exported once per session."""
    from safetensors.torch import save_file

    from stn_deploy.cli import main

    root = tmp_path_factory.mktemp("realistic")
    done: dict[tuple[str, str, str], tuple[Path, str]] = {}

    def weights(name: str) -> Path:
        path = root / f"{name}.safetensors"
        if not path.exists():
            save_file(R.make(CASES[name]).state_dict(), str(path))
        return path

    def get(name: str, flavour: str, precision: str, capsys) -> tuple[Path, str]:
        key = (name, flavour, precision)
        if key not in done:
            out = root / f"{name}.{flavour}.{precision}.onnx"
            capsys.readouterr()
            code = main(["export", *cli_source(CASES[name], weights(name)), "--flavour", flavour,
                         "--precision", precision, "--out", str(out)])
            assert code == 0, capsys.readouterr()
            done[key] = (out, capsys.readouterr().out)
        return done[key]

    get.weights = weights
    return get
