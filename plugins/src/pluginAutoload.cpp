/*
 * libstn_gridsample_plugin_autoload.so: registers the GridSample creators with TensorRT's plugin
 * registry as soon as it is loaded, for hosts that only dlopen() a plugin library and never call
 * IPluginRegistry::loadLibrary. Triton's TensorRT backend is one: its
 * --backend-config=tensorrt,plugins=PATH does dlopen(PATH, RTLD_NOW | RTLD_LOCAL) and nothing
 * else; ctypes.CDLL(PATH) after `import tensorrt` is another.
 *
 * It needs the plugin library (DT_NEEDED, found next to it through RUNPATH $ORIGIN) and finds the
 * libnvinfer already in the process with RTLD_NOLOAD, so it never loads a TensorRT of its own:
 * load it after TensorRT. Load either this library or the plugin library through loadLibrary,
 * not both: the registry refuses a second creator under the same name, version and namespace.
 */
#include "pluginNames.h"

#include "pluginHost.h"

#include <NvInferRuntime.h>

#include <cstdio>
#include <dlfcn.h>
#include <string>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept;
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

namespace
{

using GetRegistryFn = nvinfer1::IPluginRegistry* (*) ();
using GetLoggerFn = nvinfer1::ILogger* (*) ();

#define STN_STR2(x) #x
#define STN_STR(x) STN_STR2(x)
// The TensorRT these headers belong to first, then any other libnvinfer already loaded.
constexpr char const* kNVINFER_NAMES[]
    = {"libnvinfer.so." STN_STR(NV_TENSORRT_MAJOR), "libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"};

//! Hands the plugin library TensorRT's global logger (what loadLibrary would do via setLoggerFinder).
class GlobalLoggerFinder final : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return mLogger;
    }
    nvinfer1::ILogger* mLogger{nullptr};
};

GlobalLoggerFinder gFinder;

void report(nvinfer1::ILogger* logger, nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    std::string const line = "stn autoload: " + message;
    if (logger != nullptr)
    {
        logger->log(severity, line.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", line.c_str());
    }
}

//! getPluginRegistry/getLogger of the libnvinfer in this process; nullptr registry if none.
void findTensorRT(GetRegistryFn& registry, GetLoggerFn& logger) noexcept
{
    registry = nullptr;
    logger = nullptr;
    for (char const* name : kNVINFER_NAMES)
    {
        void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD); // only one already loaded
        if (handle == nullptr)
        {
            continue;
        }
        registry = reinterpret_cast<GetRegistryFn>(dlsym(handle, "getPluginRegistry"));
        logger = reinterpret_cast<GetLoggerFn>(dlsym(handle, "getLogger"));
        dlclose(handle); // drops only the reference RTLD_NOLOAD added
        if (registry != nullptr)
        {
            return;
        }
    }
    // A TensorRT loaded into the global scope under another name (RTLD_GLOBAL, static link).
    registry = reinterpret_cast<GetRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
    logger = reinterpret_cast<GetLoggerFn>(dlsym(RTLD_DEFAULT, "getLogger"));
}

void registerAll() noexcept
{
    GetRegistryFn getRegistry = nullptr;
    GetLoggerFn getLogger = nullptr;
    findTensorRT(getRegistry, getLogger);
    // A logger of another layout (10.x headers, TensorRT 11 host or the reverse) is not called.
    nvinfer1::ILogger* logger = getLogger != nullptr && stn::hostLoggerMatchesHeaders() ? getLogger() : nullptr;
    nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        report(logger, nvinfer1::ILogger::Severity::kERROR,
            "TensorRT (libnvinfer) is not loaded in this process, so no creator was registered; load "
            "this library after TensorRT (Triton: --backend-config=tensorrt,plugins=<this file>), or "
            "load libstn_gridsample_plugin.so with IPluginRegistry::loadLibrary instead");
        return;
    }
    gFinder.mLogger = logger;
    setLoggerFinder(&gFinder);
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    std::string registered;
    std::string refused;
    for (int32_t i = 0; i < count; ++i)
    {
        auto const* v3 = static_cast<nvinfer1::IPluginCreatorV3One const*>(creators[i]);
        std::string const name = v3->getPluginName();
        std::string& list = registry->registerCreator(*creators[i], stn::kPLUGIN_NAMESPACE) ? registered : refused;
        list += (list.empty() ? "" : ", ") + name;
    }
    if (!registered.empty())
    {
        report(logger, nvinfer1::ILogger::Severity::kINFO,
            "registered " + registered + " (namespace " + stn::kPLUGIN_NAMESPACE + ", version "
                + stn::kPLUGIN_VERSION + ")");
    }
    if (!refused.empty())
    {
        report(logger, nvinfer1::ILogger::Severity::kWARNING,
            "the registry refused " + refused
                + " (already registered? load this library or the plugin library, not both)");
    }
}

//! Runs registerAll() once, when the dynamic loader initialises this library.
struct AutoRegister
{
    AutoRegister() noexcept
    {
        try
        {
            registerAll();
        }
        catch (...)
        {
            std::fprintf(stderr, "stn autoload: unexpected exception; no creator registered\n");
        }
    }
};

AutoRegister const gAutoRegister;

} // namespace
