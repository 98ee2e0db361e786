/*
 * The GridSample plugin's public names, defined once for the C++ side: op types (= TensorRT
 * plugin names), namespace, version and attribute (field) names. stn_deploy/plugins/names.py
 * holds the Python side; tests/plugins/test_names.py checks that the two agree.
 * Bump kPLUGIN_VERSION whenever the serialized fields change.
 */
#ifndef STN_PLUGIN_NAMES_H
#define STN_PLUGIN_NAMES_H

namespace stn
{

constexpr char const* kPLUGIN_NAMESPACE = "stn";
constexpr char const* kPLUGIN_VERSION = "1";

constexpr char const* kGRID_SAMPLE_OP = "STNGridSample";
constexpr char const* kAFFINE_GRID_SAMPLE_OP = "STNAffineGridSample";
constexpr char const* kPROJECTIVE_GRID_SAMPLE_OP = "STNProjectiveGridSample";

constexpr char const* kATTR_INTERPOLATION_MODE = "interpolation_mode";
constexpr char const* kATTR_PADDING_MODE = "padding_mode";
constexpr char const* kATTR_ALIGN_CORNERS = "align_corners";
constexpr char const* kATTR_OUT_HEIGHT = "out_height";
constexpr char const* kATTR_OUT_WIDTH = "out_width";

} // namespace stn

#endif // STN_PLUGIN_NAMES_H
