/*
 * GridSample plugins for TensorRT (IPluginV3): shape and type inference, format negotiation,
 * serialization, and the enqueue dtype switch onto the kernels. Field parsing, validation, the
 * logger and the creators are in gridSamplePluginCreator.cpp.
 * Every noexcept method catches everything: a throwing plugin would kill the serving process.
 */
#include "gridSamplePlugin.h"

#include "gridSampleKernel.h"
#include "pluginNames.h"

#include <cstring>
#include <exception>
#include <limits>
#include <new>

using namespace nvinfer1;

namespace stn
{
namespace
{

constexpr int32_t kNB_INPUTS = 2;
constexpr int32_t kNB_OUTPUTS = 1;

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

} // namespace stn
