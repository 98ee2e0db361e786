"""The folders map into one ``stn_deploy`` namespace, editable and as a built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "export", "runtime", "runtime/serving", "plugins")


def test_editable_install_maps_folders():
    import stn_deploy

    for name in PACKAGES:
        module = __import__(f"stn_deploy.{name.replace('/', '.')}", fromlist=["_"])
        assert Path(module.__file__).resolve() == ROOT / name / "__init__.py"
    assert stn_deploy.__version__


def test_runtime_imports_without_tensorrt_or_export():
    code = (
        "import sys, stn_deploy.runtime; "
        "bad = [m for m in sys.modules if m.startswith(('tensorrt', 'stn_deploy.export', "
        "'stn_deploy.models'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_built_wheel_contains_and_imports_every_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("stn_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in PACKAGES:
        assert f"stn_deploy/{name}/__init__.py" in names
    assert "stn_deploy/models/sampling.py" in names
    assert not any(n.startswith(("models/", "runtime/", "export/", "tests/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import stn_deploy.models.sampling as s, stn_deploy.runtime as r, stn_deploy.export, "
        "stn_deploy.runtime.serving.protocol, stn_deploy.plugins; print(s.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site)), out.stdout
