"""The README's promises: its marked command blocks (and docs/*.md's) run as written, CI runs its
test command, and its links point at files that exist.

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
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = r"<!-- readme-test -->\n```bash\n(.*?)```"
MARKED = re.findall(BLOCK, README, flags=re.S)
ALL_MARKED = [(page.relative_to(ROOT).as_posix(), block) for page in PAGES
              for block in re.findall(BLOCK, page.read_text(), flags=re.S)]


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


def test_the_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 260  # the depth lives in docs/
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.slow
@pytest.mark.parametrize("page,index", [(p, i) for i, (p, _) in enumerate(ALL_MARKED)])
def test_marked_block_runs(page, index, tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    block = ALL_MARKED[index][1]
    script = "set -euo pipefail\n" + block
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{page} block {index} failed (exit {result.returncode}):\n{block}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    if "stn-deploy verify" in block:
        assert "verify PASS" in result.stdout + result.stderr
