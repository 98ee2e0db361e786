/*
 * Entry points TensorRT looks up when it loads this library dynamically
 * (IPluginRegistry::loadLibrary, trt.get_plugin_registry().load_library, trtexec --dynamicPlugins,
 * engines built with setPluginsToSerialize). No link against libnvinfer is needed.
 */
#include "gridSamplePlugin.h"

namespace stn
{
void setGlobalLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
} // namespace stn

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    stn::setGlobalLoggerFinder(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) noexcept
{
    try
    {
        static stn::GridSamplePluginCreator sGrid(stn::Source::kGRID);
        static stn::GridSamplePluginCreator sAffine(stn::Source::kAFFINE);
        static stn::GridSamplePluginCreator sProjective(stn::Source::kPROJECTIVE);
        static nvinfer1::IPluginCreatorInterface* const kCREATORS[] = {&sGrid, &sAffine, &sProjective};
        nbCreators = 3;
        return kCREATORS;
    }
    catch (...) // the creators' field tables allocate: out of memory must not abort the host
    {
        nbCreators = 0;
        return nullptr;
    }
}
