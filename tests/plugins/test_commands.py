"""``stn-deploy plugins info`` and ``stn-deploy plugins build`` through the real CLI parser."""

from __future__ import annotations

import shutil

import pytest

from stn_deploy.cli import main
from stn_deploy.plugins import names


def test_plugins_info_lists_ops_and_fields(capsys):
    assert main(["plugins", "info"]) == 0
    out = capsys.readouterr().out
    for op_type, fields in names.FIELDS.items():
        assert f"{op_type}: {', '.join(fields)}" in out
    assert f"namespace {names.PLUGIN_NAMESPACE!r}, version {names.PLUGIN_VERSION!r}" in out


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH")
def test_plugins_build_cpu_only_prints_libraries_and_summary(tmp_path, capsys):
    assert main(["plugins", "build", "--cpu-only", "--build-dir", str(tmp_path), "-j", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"CPU library:      {tmp_path / 'libstn_gridsample_cpu.so'}" in lines
    assert (tmp_path / "libstn_gridsample_cpu.so").is_file()
    assert lines[-1].startswith("built: cpu: libstn_gridsample_cpu.so; kernels: skipped")
    assert "plugin: skipped" in lines[-1]


def test_plugins_build_rejects_bad_arch(capsys):
    assert main(["plugins", "build", "--arch", "ampere"]) == 2
    assert "bad --arch" in capsys.readouterr().err
