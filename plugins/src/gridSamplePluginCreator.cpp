/*
 * The creator side of the GridSample plugins: field tables, attribute parsing and validation
 * (a bad value makes createPlugin return nullptr with a logged reason), the plugin's logger, and
 * IPluginCreatorV3One. Every noexcept method catches everything.
 */
#include "gridSamplePlugin.h"

#include "pluginHost.h"
#include "pluginNames.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>

using namespace nvinfer1;

namespace stn
{
namespace
{

// fields of STNGridSample
constexpr char const* kGRID_FIELDS[] = {kATTR_INTERPOLATION_MODE, kATTR_PADDING_MODE, kATTR_ALIGN_CORNERS};
// fields of STNAffineGridSample
constexpr char const* kAFFINE_FIELDS[]
    = {kATTR_OUT_HEIGHT, kATTR_OUT_WIDTH, kATTR_INTERPOLATION_MODE, kATTR_PADDING_MODE, kATTR_ALIGN_CORNERS};
// fields of STNProjectiveGridSample
constexpr char const* kPROJECTIVE_FIELDS[]
    = {kATTR_OUT_HEIGHT, kATTR_OUT_WIDTH, kATTR_INTERPOLATION_MODE, kATTR_PADDING_MODE, kATTR_ALIGN_CORNERS};

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};
bool gLoggerUsable{false}; //!< the host's logger interfaces have our headers' layout

bool isFused(Source kind) noexcept
{
    return kind != Source::kGRID;
}

//! One integer from a field of any integer type (ONNX INT arrives as kINT32).
bool fieldInt(PluginField const& f, int64_t& value) noexcept
{
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(f.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(f.data); return true;
    default: return false;
    }
}

bool inRange(int64_t v, int64_t lo, int64_t hi) noexcept
{
    return v >= lo && v <= hi;
}

std::string describe(Source kind, char const* field, int64_t value, char const* expected)
{
    std::ostringstream os;
    os << opTypeOf(kind) << ": attribute " << field << "=" << value << " is invalid; expected " << expected;
    return os.str();
}

bool fitsInt32(int64_t v) noexcept
{
    return v > 0 && v <= std::numeric_limits<int32_t>::max();
}

} // namespace

char const* opTypeOf(Source kind) noexcept
{
    switch (kind)
    {
    case Source::kGRID: return kGRID_SAMPLE_OP;
    case Source::kAFFINE: return kAFFINE_GRID_SAMPLE_OP;
    case Source::kPROJECTIVE: return kPROJECTIVE_GRID_SAMPLE_OP;
    }
    return "";
}

std::vector<char const*> const& fieldNamesOf(Source kind)
{
    static std::vector<char const*> const grid(std::begin(kGRID_FIELDS), std::end(kGRID_FIELDS));
    static std::vector<char const*> const affine(std::begin(kAFFINE_FIELDS), std::end(kAFFINE_FIELDS));
    static std::vector<char const*> const projective(std::begin(kPROJECTIVE_FIELDS), std::end(kPROJECTIVE_FIELDS));
    return kind == Source::kGRID ? grid : (kind == Source::kAFFINE ? affine : projective);
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        std::string const text = std::string("[stn GridSample plugin] ") + message;
        if (gLoggerFinder != nullptr && !gLoggerUsable)
        {
            // Never call into a virtual table of another layout: say it on stderr instead.
            std::fprintf(stderr, "%s\n", text.c_str());
            return;
        }
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
    }
    catch (...)
    {
        // Logging must never take the process down.
    }
}

void setGlobalLoggerFinder(ILoggerFinder* finder) noexcept
{
    try
    {
        bool const usable = hostLoggerMatchesHeaders();
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        gLoggerFinder = finder;
        gLoggerUsable = usable;
        if (finder != nullptr && !usable)
        {
            std::fprintf(stderr,
                "[stn GridSample plugin] this library was built with TensorRT %d headers, whose logger "
                "interfaces differ from the TensorRT in this process (%s); its messages go to stderr. "
                "Rebuild it with the headers of the TensorRT you run (TensorRT-RTX: 11.x headers): "
                "stn-deploy plugins build --tensorrt-root DIR\n",
                NV_TENSORRT_MAJOR, kHEADERS_VERSIONED_LOGGER ? "TensorRT 10" : "TensorRT 11 or TensorRT-RTX");
        }
    }
    catch (...)
    {
        // A failed lock leaves the previous finder: logging is best effort.
    }
}

bool parseFields(Source kind, PluginFieldCollection const* fc, GridSampleParams& params, std::string& error)
{
    params = GridSampleParams{};
    bool haveH = false;
    bool haveW = false;
    int32_t const nb = fc != nullptr ? fc->nbFields : 0;
    for (int32_t i = 0; i < nb; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        int64_t v = 0;
        bool const known = !std::strcmp(f.name, kATTR_INTERPOLATION_MODE) || !std::strcmp(f.name, kATTR_PADDING_MODE)
            || !std::strcmp(f.name, kATTR_ALIGN_CORNERS)
            || (isFused(kind) && (!std::strcmp(f.name, kATTR_OUT_HEIGHT) || !std::strcmp(f.name, kATTR_OUT_WIDTH)));
        if (!known)
        {
            continue; // not one of our fields (TensorRT passes only listed ones; be lenient)
        }
        if (!fieldInt(f, v))
        {
            error = std::string(opTypeOf(kind)) + ": attribute " + f.name + " must be one integer";
            return false;
        }
        if (!std::strcmp(f.name, kATTR_INTERPOLATION_MODE))
        {
            if (!inRange(v, 0, 2))
            {
                error = describe(kind, f.name, v, "0 (bilinear), 1 (nearest) or 2 (bicubic)");
                return false;
            }
            params.mode = static_cast<Interp>(v);
        }
        else if (!std::strcmp(f.name, kATTR_PADDING_MODE))
        {
            if (!inRange(v, 0, 2))
            {
                error = describe(kind, f.name, v, "0 (zeros), 1 (border) or 2 (reflection)");
                return false;
            }
            params.padding = static_cast<Padding>(v);
        }
        else if (!std::strcmp(f.name, kATTR_ALIGN_CORNERS))
        {
            if (!inRange(v, 0, 1))
            {
                error = describe(kind, f.name, v, "0 or 1");
                return false;
            }
            params.alignCorners = v != 0;
        }
        else
        {
            if (!fitsInt32(v))
            {
                error = describe(kind, f.name, v, "a positive size below 2^31");
                return false;
            }
            bool const height = !std::strcmp(f.name, kATTR_OUT_HEIGHT);
            (height ? params.outH : params.outW) = static_cast<int32_t>(v);
            (height ? haveH : haveW) = true;
        }
    }
    if (isFused(kind) && !(haveH && haveW))
    {
        error = std::string(opTypeOf(kind)) + ": attributes " + kATTR_OUT_HEIGHT + " and " + kATTR_OUT_WIDTH
            + " are required";
        return false;
    }
    if (isFused(kind) && static_cast<int64_t>(params.outH) * params.outW > std::numeric_limits<int32_t>::max() / 2)
    {
        error = std::string(opTypeOf(kind)) + ": out_height * out_width must stay below 2^30";
        return false;
    }
    return true;
}

// ---- GridSamplePluginCreator -------------------------------------------------------------------

GridSamplePluginCreator::GridSamplePluginCreator(Source kind)
    : mKind(kind)
{
    for (char const* name : fieldNamesOf(kind))
    {
        mFieldNames.emplace_back(name, nullptr, PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

IPluginV3* GridSamplePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        GridSampleParams params;
        std::string error;
        if (!parseFields(mKind, fc, params, error))
        {
            logMessage(ILogger::Severity::kERROR, error + (name != nullptr ? std::string(" (layer ") + name + ")" : ""));
            return nullptr;
        }
        return new GridSamplePlugin(mKind, params);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string("createPlugin failed: ") + e.what());
    }
    catch (...)
    {
        logMessage(ILogger::Severity::kERROR, "createPlugin failed");
    }
    return nullptr;
}

PluginFieldCollection const* GridSamplePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* GridSamplePluginCreator::getPluginName() const noexcept
{
    return opTypeOf(mKind);
}

char const* GridSamplePluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* GridSamplePluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

} // namespace stn
