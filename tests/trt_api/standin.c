/*
 * A stand-in for the ~10 C entry points the TensorRT Python bindings link (libnvinfer,
 * libnvonnxparser, libnvinfer_plugin). Built at test time under the sonames the bindings need,
 * it lets `import tensorrt_bindings` succeed on a machine without TensorRT, so the API can be
 * introspected. Nothing here is ever called for real work: every factory returns NULL.
 */
#include <stddef.h>

#ifndef STANDIN_VERSION
#define STANDIN_VERSION 0
#endif

void* createInferBuilder_INTERNAL(void* logger, int version) { (void) logger; (void) version; return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { (void) logger; (void) version; return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version)
{
    (void) engine; (void) logger; (void) version;
    return NULL;
}
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int capability) { (void) capability; return NULL; }
int initLibNvInferPlugins(void* logger, char const* ns) { (void) logger; (void) ns; return 0; }
void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version)
{
    (void) network; (void) logger; (void) version;
    return NULL;
}
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version)
{
    (void) refitter; (void) logger; (void) version;
    return NULL;
}
int getNvOnnxParserVersion(void) { return STANDIN_VERSION; }
int getInferLibVersion(void) { return STANDIN_VERSION; }
