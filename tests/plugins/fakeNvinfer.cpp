/*
 * A stand-in libnvinfer for testing libstn_gridsample_plugin_autoload.so without TensorRT: it
 * exports getPluginRegistry() and getLogger() like the real library and prints one line per
 * registration and log message ("register NAME VERSION NAMESPACE ok|refused", "log SEVERITY
 * MESSAGE"). Built with the soname of the TensorRT whose headers it is compiled against.
 */
#include <NvInferRuntime.h>

#include <cstdio>
#include <set>
#include <string>

using namespace nvinfer1;

namespace
{

class PrintingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::printf("log %d %s\n", static_cast<int>(severity), msg);
        std::fflush(stdout);
    }
};

class RecordingRegistry final : public IPluginRegistry
{
public:
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override
    {
        auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
        std::string const key = std::string(v3.getPluginName()) + " " + v3.getPluginVersion() + " " + ns;
        bool const fresh = mKeys.insert(key).second; // TensorRT refuses a duplicate too
        std::printf("register %s %s\n", key.c_str(), fresh ? "ok" : "refused");
        std::fflush(stdout);
        return fresh;
    }
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override
    {
        return nullptr;
    }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override
    {
        *n = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override
    {
        return false;
    }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override
    {
        *n = 0;
        return nullptr;
    }

private:
    std::set<std::string> mKeys;
};

} // namespace

extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    static RecordingRegistry sRegistry;
    return &sRegistry;
}

extern "C" __attribute__((visibility("default"))) ILogger* getLogger() noexcept
{
    static PrintingLogger sLogger;
    return &sLogger;
}
