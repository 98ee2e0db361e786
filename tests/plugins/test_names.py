"""The C++ names header agrees with stn_deploy.plugins.names: op types, namespace, fields."""

from __future__ import annotations

import re

from stn_deploy.plugins import names
from stn_deploy.plugins.cpu import SOURCE_DIR

CONSTANT = re.compile(r'constexpr\s+char\s+const\s*\*\s*(k\w+)\s*=\s*"([^"]*)"\s*;')


def cpp_names() -> dict[str, str]:
    return dict(CONSTANT.findall((SOURCE_DIR / "pluginNames.h").read_text()))


def test_header_matches_python_names():
    cpp = cpp_names()
    assert cpp == {
        "kPLUGIN_NAMESPACE": names.PLUGIN_NAMESPACE,
        "kPLUGIN_VERSION": names.PLUGIN_VERSION,
        "kGRID_SAMPLE_OP": names.GRID_SAMPLE_OP,
        "kAFFINE_GRID_SAMPLE_OP": names.AFFINE_GRID_SAMPLE_OP,
        "kPROJECTIVE_GRID_SAMPLE_OP": names.PROJECTIVE_GRID_SAMPLE_OP,
        "kATTR_INTERPOLATION_MODE": names.ATTR_INTERPOLATION_MODE,
        "kATTR_PADDING_MODE": names.ATTR_PADDING_MODE,
        "kATTR_ALIGN_CORNERS": names.ATTR_ALIGN_CORNERS,
        "kATTR_OUT_HEIGHT": names.ATTR_OUT_HEIGHT,
        "kATTR_OUT_WIDTH": names.ATTR_OUT_WIDTH,
    }


def test_creator_field_lists_match_python_fields():
    """The creators' getFieldNames() lists, as written in the plugin source, match FIELDS."""
    source = (SOURCE_DIR / "gridSamplePluginCreator.cpp").read_text()
    lists = dict(re.findall(r"// fields of (\w+)\n[^{]*\{([^}]*)\}", source))
    cpp = {k: v for k, v in cpp_names().items() if k.startswith("kATTR_")}
    for op_type, fields in names.FIELDS.items():
        constants = re.findall(r"k\w+", lists[op_type])
        assert tuple(cpp[c] for c in constants) == fields, op_type


def test_enums_are_pytorchs():
    assert names.INTERPOLATION_MODES == {"bilinear": 0, "nearest": 1, "bicubic": 2}
    assert names.PADDING_MODES == {"zeros": 0, "border": 1, "reflection": 2}
    assert names.mode_int("bicubic") == 2 and names.padding_int(1) == 1
