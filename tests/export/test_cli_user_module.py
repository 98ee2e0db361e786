"""A new user's path: their own module file, exported, checked and verified via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stn_deploy.cli import main

USER_MODULE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class MySTN(nn.Module):
        def __init__(self, hidden=8):
            super().__init__()
            self.loc = nn.Sequential(nn.Conv2d(1, hidden, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                     nn.Flatten(), nn.Linear(4 * hidden, 6))
            self.cls = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4 * 26 * 26, 10))

        def forward(self, x):
            theta = self.loc(x).view(-1, 2, 3)
            grid = F.affine_grid(theta, x.size(), align_corners=False)
            return self.cls(F.grid_sample(x, grid, align_corners=False))
    """
)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    pkg = root / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "stn.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))
    try:
        from mypkg.stn import MySTN
    finally:
        sys.path.remove(str(root))
    model = MySTN(hidden=6)
    with torch.no_grad():
        model.loc[-1].bias.copy_(torch.tensor([0.9, 0.2, 0.1, -0.2, 1.1, 0.0]))
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(root / "w.safetensors"))
    with torch.no_grad():
        model.cls[-1].bias.add_(0.5)  # a different model: its weights must fail verification
    torch.save(model.state_dict(), root / "other.pt")
    return root


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}
    cmd = [sys.executable, "-m", "stn_deploy.cli", *args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_user_module_export_check_verify(user_dir):
    common = ["--module", "mypkg.stn:MySTN", "--kwargs", '{"hidden": 6}']
    done = _cli(user_dir, "export", *common, "--weights", "w.safetensors",
                "--input-shape", "1,1,28,28", "--out", "my.onnx")
    assert done.returncode == 0, done.stderr
    assert "contract OK" in done.stdout
    done = _cli(user_dir, "check", "my.onnx")
    assert done.returncode == 0 and "contract OK" in done.stdout, done.stdout + done.stderr
    done = _cli(user_dir, "verify", *common, "--weights", "w.safetensors",
                "--input-shape", "1,28,28", "my.onnx", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["passed"] and record["max_abs_err"] < 1e-4 and record["top1_agreement"] == 1.0


def test_verify_with_other_weights_fails_with_numbers(user_dir, capsys, monkeypatch):
    monkeypatch.chdir(user_dir)
    monkeypatch.syspath_prepend(str(user_dir))
    onnx_path = user_dir / "my.onnx"
    if not onnx_path.exists():
        pytest.skip("needs the export of test_user_module_export_check_verify")
    code = main(["verify", "--module", "mypkg.stn:MySTN", "--kwargs", '{"hidden": 6}',
                 "--weights", "other.pt", "--input-shape", "1,28,28", str(onnx_path), "--json"])
    out = capsys.readouterr()
    assert code == 1
    record = json.loads(out.out.strip().splitlines()[-1])
    assert record["max_abs_err"] == pytest.approx(0.5, abs=1e-3)
    assert "after the last sampler" in record["suspect"] and "other weights" in record["suspect"]
    assert "FAIL" in out.err


def test_check_fails_on_an_opset20_export(tmp_path, capsys):
    from stn_deploy.export.onnx_export import export_plain

    from .stn_fixtures import DirectSTN

    path = export_plain(DirectSTN(mode="bicubic"), (1, 16, 16), tmp_path / "d.onnx", opset=20)
    code = main(["check", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "gridsample-mode" in out and "NEAREST" in out
