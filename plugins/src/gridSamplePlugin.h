/*
 * TensorRT IPluginV3 plugins of the GridSample family: STNGridSample (X, grid),
 * STNAffineGridSample (X, theta) and STNProjectiveGridSample (X, h). One final plugin class and
 * one final creator class serve the three op types; the op type fixes the second input's meaning
 * (Source) and whether out_height/out_width are fields. Kernels: gridSampleKernel.h.
 */
#ifndef STN_GRID_SAMPLE_PLUGIN_H
#define STN_GRID_SAMPLE_PLUGIN_H

#include "gridSampleMath.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace stn
{

//! The attributes of one plugin instance (what getFieldsToSerialize writes).
struct GridSampleParams
{
    Interp mode{Interp::kBILINEAR};
    Padding padding{Padding::kZEROS};
    bool alignCorners{false};
    int32_t outH{0}; //!< fused ops only
    int32_t outW{0}; //!< fused ops only
};

//! Op type (= plugin name) of a source kind, and its creator field names (in order).
char const* opTypeOf(Source kind) noexcept;
std::vector<char const*> const& fieldNamesOf(Source kind);

//! Log through the ILoggerFinder TensorRT handed to setLoggerFinder (no-op before that).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

class GridSamplePlugin final : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime
{
public:
    GridSamplePlugin(Source kind, GridSampleParams const& params);
    GridSamplePlugin(GridSamplePlugin const& other);
    GridSamplePlugin& operator=(GridSamplePlugin const&) = delete;
    ~GridSamplePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Rank the op's second input must have: grid [N,Ho,Wo,2] 4, theta [N,2,3] / h [N,3,3] 3.
    int32_t coordsRank() const noexcept;

    Source mKind;
    GridSampleParams mParams;
    int32_t mFieldValues[5]{};
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class GridSamplePluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit GridSamplePluginCreator(Source kind);
    ~GridSamplePluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    Source mKind;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parse and validate creator fields; returns false with a reason in `error` on a bad value.
bool parseFields(Source kind, nvinfer1::PluginFieldCollection const* fc, GridSampleParams& params, std::string& error);

} // namespace stn

#endif // STN_GRID_SAMPLE_PLUGIN_H
