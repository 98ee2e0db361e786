/*
 * GridSample plugins for TensorRT (IPluginV3): field parsing and validation, shape and type
 * inference, format negotiation, serialization, and the enqueue dtype switch onto the kernels.
 * Every noexcept method catches everything: a throwing plugin would kill the serving process.
 */
#include "gridSamplePlugin.h"

#include "gridSampleKernel.h"
#include "pluginNames.h"

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

constexpr int32_t kNB_INPUTS = 2;
constexpr int32_t kNB_OUTPUTS = 1;

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder{nullptr};

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

template <typename T, typename G>
cudaError_t launch(Source kind, void const* x, void const* coords, void* y, GridSampleShape const& s, Interp mode,
    cudaStream_t stream)
{
    auto const* in = static_cast<T const*>(x);
    auto const* c = static_cast<G const*>(coords);
    auto* out = static_cast<T*>(y);
    switch (kind)
    {
    case Source::kGRID: return launchGridSample<T, G>(in, c, out, s, mode, stream);
    case Source::kAFFINE: return launchAffineGridSample<T, G>(in, c, out, s, mode, stream);
    case Source::kPROJECTIVE: return launchProjectiveGridSample<T, G>(in, c, out, s, mode, stream);
    }
    return cudaErrorInvalidValue;
}

template <typename G>
cudaError_t launchHWC8Typed(Source kind, void const* x, void const* coords, void* y, GridSampleShape const& s,
    Interp mode, cudaStream_t stream)
{
    auto const* in = static_cast<__half const*>(x);
    auto const* c = static_cast<G const*>(coords);
    auto* out = static_cast<__half*>(y);
    switch (kind)
    {
    case Source::kGRID: return launchGridSampleHWC8<G>(in, c, out, s, mode, stream);
    case Source::kAFFINE: return launchAffineGridSampleHWC8<G>(in, c, out, s, mode, stream);
    case Source::kPROJECTIVE: return launchProjectiveGridSampleHWC8<G>(in, c, out, s, mode, stream);
    }
    return cudaErrorInvalidValue;
}

//! fp16 kHWC8 data with fp16 or fp32 (linear) coordinates.
cudaError_t launchHWC8(Source kind, void const* x, void const* coords, void* y, GridSampleShape const& s, Interp mode,
    DataType coordType, cudaStream_t stream)
{
    if (coordType == DataType::kHALF)
    {
        return launchHWC8Typed<__half>(kind, x, coords, y, s, mode, stream);
    }
    if (coordType == DataType::kFLOAT)
    {
        return launchHWC8Typed<float>(kind, x, coords, y, s, mode, stream);
    }
    return cudaErrorInvalidValue;
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
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            std::string const text = std::string("[stn GridSample plugin] ") + message;
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
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
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

// ---- GridSamplePlugin --------------------------------------------------------------------------

GridSamplePlugin::GridSamplePlugin(Source kind, GridSampleParams const& params)
    : mKind(kind)
    , mParams(params)
{
}

GridSamplePlugin::GridSamplePlugin(GridSamplePlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mKind(other.mKind)
    , mParams(other.mParams)
{
    // mFields point into the owner's mFieldValues: rebuilt by getFieldsToSerialize, never copied.
}

IPluginCapability* GridSamplePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
    }
    catch (...)
    {
    }
    return nullptr;
}

IPluginV3* GridSamplePlugin::clone() noexcept
{
    try
    {
        return new GridSamplePlugin(*this);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string("clone failed: ") + e.what());
    }
    catch (...)
    {
        logMessage(ILogger::Severity::kERROR, "clone failed");
    }
    return nullptr;
}

char const* GridSamplePlugin::getPluginName() const noexcept
{
    return opTypeOf(mKind);
}

char const* GridSamplePlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* GridSamplePlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t GridSamplePlugin::coordsRank() const noexcept
{
    return mKind == Source::kGRID ? 4 : 3;
}

int32_t GridSamplePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
            || in[0].desc.dims.nbDims != 4 || in[1].desc.dims.nbDims != coordsRank())
        {
            logMessage(ILogger::Severity::kERROR,
                std::string(opTypeOf(mKind)) + ": expected X [N,C,H,W] and "
                    + (mKind == Source::kGRID ? "grid [N,Ho,Wo,2]" : "a [N,2,3] or [N,3,3] transform"));
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t GridSamplePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
        {
            return -1;
        }
        outputTypes[0] = inputTypes[0]; // Y has X's type (fp32 or fp16)
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t GridSamplePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
            || inputs[0].nbDims != 4 || inputs[1].nbDims != coordsRank())
        {
            logMessage(ILogger::Severity::kERROR, std::string(opTypeOf(mKind)) + ": unexpected input ranks");
            return -1;
        }
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        if (mKind == Source::kGRID)
        {
            outputs[0].d[2] = inputs[1].d[1];
            outputs[0].d[3] = inputs[1].d[2];
        }
        else
        {
            outputs[0].d[2] = exprBuilder.constant(mParams.outH);
            outputs[0].d[3] = exprBuilder.constant(mParams.outW);
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

bool GridSamplePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
            || pos >= kNB_INPUTS + kNB_OUTPUTS)
        {
            return false;
        }
        PluginTensorDesc const& d = inOut[pos].desc;
        PluginTensorDesc const& x = inOut[0].desc;
        switch (pos)
        {
        // X: fp32/fp16 linear, or fp16 channels-last with 8-channel groups (kHWC8).
        case 0:
            return (d.format == TensorFormat::kLINEAR && (d.type == DataType::kFLOAT || d.type == DataType::kHALF))
                || (d.format == TensorFormat::kHWC8 && d.type == DataType::kHALF);
        // Coordinates: linear; fp32 always, fp16 only with fp16 data (the kernels' instantiations).
        case 1:
            return d.format == TensorFormat::kLINEAR
                && (d.type == DataType::kFLOAT || (d.type == DataType::kHALF && x.type == DataType::kHALF));
        // Y: X's type and format.
        default: return d.type == x.type && d.format == x.format;
        }
    }
    catch (...)
    {
        return false;
    }
}

int32_t GridSamplePlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

size_t GridSamplePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0; // fused kernels never materialise a grid
}

int32_t GridSamplePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
            || in[0].dims.nbDims != 4 || in[1].dims.nbDims != coordsRank() || out[0].dims.nbDims != 4)
        {
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

int32_t GridSamplePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            return -1;
        }
        Dims const& x = inputDesc[0].dims;
        Dims const& y = outputDesc[0].dims;
        Dims const& c = inputDesc[1].dims;
        // The kernels trust these: a mismatched coordinate tensor would be read out of bounds.
        bool const coordsOk = mKind == Source::kGRID
            ? (c.nbDims == 4 && c.d[0] == x.d[0] && c.d[1] == y.d[2] && c.d[2] == y.d[3] && c.d[3] == 2)
            : (c.nbDims == 3 && c.d[0] == x.d[0] && c.d[1] == (mKind == Source::kAFFINE ? 2 : 3) && c.d[2] == 3);
        if (x.nbDims != 4 || y.nbDims != 4 || !coordsOk || y.d[0] != x.d[0] || y.d[1] != x.d[1])
        {
            logMessage(ILogger::Severity::kERROR, std::string(opTypeOf(mKind)) + ": input/output shapes do not match");
            return -1;
        }
        for (int32_t i = 1; i < 4; ++i)
        {
            if (x.d[i] < 0 || x.d[i] > std::numeric_limits<int32_t>::max() || y.d[i] < 0
                || y.d[i] > std::numeric_limits<int32_t>::max())
            {
                logMessage(ILogger::Severity::kERROR, std::string(opTypeOf(mKind)) + ": a dimension exceeds 2^31");
                return -1;
            }
        }
        GridSampleShape const shape{x.d[0], static_cast<int32_t>(x.d[1]), static_cast<int32_t>(x.d[2]),
            static_cast<int32_t>(x.d[3]), static_cast<int32_t>(y.d[2]), static_cast<int32_t>(y.d[3]), mParams.padding,
            mParams.alignCorners};
        DataType const dataType = inputDesc[0].type;
        DataType const coordType = inputDesc[1].type;
        cudaError_t status = cudaErrorInvalidValue;
        if (inputDesc[0].format == TensorFormat::kHWC8)
        {
            status = launchHWC8(mKind, inputs[0], inputs[1], outputs[0], shape, mParams.mode, coordType, stream);
        }
        else if (dataType == DataType::kFLOAT && coordType == DataType::kFLOAT)
        {
            status = launch<float, float>(mKind, inputs[0], inputs[1], outputs[0], shape, mParams.mode, stream);
        }
        else if (dataType == DataType::kHALF && coordType == DataType::kHALF)
        {
            status = launch<__half, __half>(mKind, inputs[0], inputs[1], outputs[0], shape, mParams.mode, stream);
        }
        else if (dataType == DataType::kHALF && coordType == DataType::kFLOAT)
        {
            status = launch<__half, float>(mKind, inputs[0], inputs[1], outputs[0], shape, mParams.mode, stream);
        }
        if (status != cudaSuccess)
        {
            logMessage(ILogger::Severity::kERROR,
                std::string(opTypeOf(mKind)) + ": kernel launch failed: " + cudaGetErrorString(status));
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

IPluginV3* GridSamplePlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* GridSamplePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFields.clear();
        auto const& fieldNames = fieldNamesOf(mKind);
        for (size_t i = 0; i < fieldNames.size(); ++i)
        {
            char const* name = fieldNames[i];
            int32_t& v = mFieldValues[i];
            if (!std::strcmp(name, kATTR_INTERPOLATION_MODE))
            {
                v = static_cast<int32_t>(mParams.mode);
            }
            else if (!std::strcmp(name, kATTR_PADDING_MODE))
            {
                v = static_cast<int32_t>(mParams.padding);
            }
            else if (!std::strcmp(name, kATTR_ALIGN_CORNERS))
            {
                v = mParams.alignCorners ? 1 : 0;
            }
            else
            {
                v = !std::strcmp(name, kATTR_OUT_HEIGHT) ? mParams.outH : mParams.outW;
            }
            mFields.emplace_back(name, &v, PluginFieldType::kINT32, 1);
        }
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (...)
    {
        return nullptr;
    }
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
