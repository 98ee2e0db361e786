"""The README's promises: its marked command blocks run as written, and CI runs its test command.

A fenced ``bash`` block right after a ``<!-- readme-test -->`` line is executed with bash in a
scratch folder, with this venv's ``stn-deploy`` and ``python`` first on PATH; every command must
succeed (``set -e``). Unmarked blocks need a GPU, TensorRT or a long-running server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARKED = re.findall(r"<!-- readme-test -->\n```bash\n(.*?)```", README, flags=re.S)


def test_readme_has_runnable_blocks():
    assert len(MARKED) >= 3
    assert any("stn-deploy export" in b and "stn-deploy verify" in b for b in MARKED)


def test_setup_commands_are_the_makefile_targets_and_ci_runs_the_test_one():
    setup = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", README, flags=re.S)
    assert setup, "the README lost its set-up block"
    commands = [line.split("#")[0].strip() for line in setup.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: ", makefile, flags=re.M)
    assert re.search(r"^test: ", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(MARKED)))
def test_marked_block_runs(index, tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    script = "set -euo pipefail\n" + MARKED[index]
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"README block {index} failed (exit {result.returncode}):\n{MARKED[index]}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    if "stn-deploy verify" in MARKED[index]:
        assert "verify PASS" in result.stdout + result.stderr
