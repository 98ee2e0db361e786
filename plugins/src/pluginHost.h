/*
 * Which TensorRT has loaded this library, and whether its logger interfaces have the layout our
 * headers describe.
 *
 * The IPluginV3 interfaces have the same virtual-table layout in TensorRT 10.16, 11.x and
 * TensorRT-RTX 1.x, so one library serves them all. ILogger and ILoggerFinder do not: from
 * TensorRT 11 (and in TensorRT-RTX) they derive from IVersionedInterface, which puts
 * getAPILanguage/getInterfaceInfo/the destructor before log()/findLogger(). A library built
 * with 10.x headers calling findLogger() on TensorRT-RTX's finder calls getAPILanguage() instead
 * (measured: it returns 0, so messages were silently dropped); one built with 11.x headers in a
 * TensorRT 10 process would read past the end of the finder's virtual table. So before using a
 * logger handed in by the host, the library compares layouts and falls back to stderr when they
 * differ.
 */
#ifndef STN_PLUGIN_HOST_H
#define STN_PLUGIN_HOST_H

#include <NvInferRuntime.h>

#include <link.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

namespace stn
{

//! True when the headers we were compiled with give ILoggerFinder an IVersionedInterface base.
constexpr bool kHEADERS_VERSIONED_LOGGER = std::is_base_of<nvinfer1::IVersionedInterface, nvinfer1::ILoggerFinder>::value;

//! 1: a TensorRT with versioned logger interfaces (11.x, TensorRT-RTX) is loaded in this process;
//! 0: one with plain ones (10.x); -1: none recognised (trust the headers).
inline int hostVersionedLogger() noexcept
{
    int found = -1;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
            char const* path = info->dlpi_name != nullptr ? info->dlpi_name : "";
            char const* slash = std::strrchr(path, '/');
            char const* name = slash != nullptr ? slash + 1 : path;
            int& out = *static_cast<int*>(data);
            if (std::strncmp(name, "libtensorrt_rtx.so", 18) == 0)
            {
                out = 1;
                return 1;
            }
            for (char const* prefix : {"libnvinfer.so.", "libnvinfer_lean.so.", "libnvinfer_dispatch.so."})
            {
                size_t const n = std::strlen(prefix);
                if (std::strncmp(name, prefix, n) == 0)
                {
                    out = std::atoi(name + n) >= 11 ? 1 : 0;
                    return 1;
                }
            }
            return 0;
        },
        &found);
    return found;
}

//! Whether loggers the host hands us can be called through our headers' virtual tables.
inline bool hostLoggerMatchesHeaders() noexcept
{
    int const host = hostVersionedLogger();
    return host < 0 || (host == 1) == kHEADERS_VERSIONED_LOGGER;
}

} // namespace stn

#endif // STN_PLUGIN_HOST_H
