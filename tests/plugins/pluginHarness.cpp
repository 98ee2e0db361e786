/*
 * Loads the built plugin library the way TensorRT's loadLibrary does (dlopen + getCreators +
 * setLoggerFinder, no libnvinfer) and exercises the creators and plugins without a GPU.
 * Prints one "key value" line per observation; test_trt_plugin.py asserts on them.
 */
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

class CaptureLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            ++mErrors;
            mLast = msg;
        }
    }
    int mErrors{0};
    std::string mLast;
};

class Finder final : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &mLogger;
    }
    CaptureLogger mLogger;
};

Finder gFinder;

struct Fields
{
    std::vector<std::string> names;
    std::vector<int32_t> values;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};

    void add(char const* name, int32_t v)
    {
        names.emplace_back(name);
        values.push_back(v);
    }
    PluginFieldCollection const* collection()
    {
        fields.clear();
        for (size_t i = 0; i < names.size(); ++i)
        {
            fields.emplace_back(names[i].c_str(), &values[i], PluginFieldType::kINT32, 1);
        }
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

DynamicPluginTensorDesc desc(DataType type, TensorFormat format, int32_t rank)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i)
    {
        d.desc.dims.d[i] = 4;
    }
    return d;
}

std::string serialize(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    std::string out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        out += std::string(fc->fields[i].name) + "=" + std::to_string(*static_cast<int32_t const*>(fc->fields[i].data))
            + (fc->fields[i].type == PluginFieldType::kINT32 ? "" : "?") + ",";
    }
    return out;
}

void checkCreator(IPluginCreatorV3One* creator)
{
    std::string const name = creator->getPluginName();
    bool const fused = name != "STNGridSample";
    PluginFieldCollection const* names = creator->getFieldNames();
    std::printf("creator %s %s %s", name.c_str(), creator->getPluginVersion(), creator->getPluginNamespace());
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        std::printf(" %s", names->fields[i].name);
    }
    std::printf("\n");

    // A valid plugin: fields -> plugin -> serialized fields -> runtime plugin -> same fields.
    Fields good;
    good.add("interpolation_mode", 2);
    good.add("padding_mode", 1);
    good.add("align_corners", 1);
    if (fused)
    {
        good.add("out_height", 7);
        good.add("out_width", 9);
    }
    IPluginV3* plugin = creator->createPlugin("layer", good.collection(), TensorRTPhase::kBUILD);
    if (plugin == nullptr)
    {
        std::printf("create %s null\n", name.c_str());
        return;
    }
    std::string const first = serialize(plugin);
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    IPluginV3* again = creator->createPlugin("layer", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    std::printf("serialize %s %s\n", name.c_str(), first.c_str());
    std::printf("roundtrip %s %d\n", name.c_str(), again != nullptr && serialize(again) == first ? 1 : 0);
    IPluginV3* copy = plugin->clone();
    std::printf("clone %s %d\n", name.c_str(), copy != nullptr && serialize(copy) == first ? 1 : 0);

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    std::printf("core %s %s %s %s\n", name.c_str(), core->getPluginName(), core->getPluginVersion(),
        core->getPluginNamespace());

    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    std::printf("outputs %s %d\n", name.c_str(), build->getNbOutputs());
    DataType outType = DataType::kFLOAT;
    DataType const inTypes[2] = {DataType::kHALF, DataType::kFLOAT};
    int32_t const typeStatus = build->getOutputDataTypes(&outType, 1, inTypes, 2);
    std::printf("outtype %s %d %d\n", name.c_str(), typeStatus, static_cast<int32_t>(outType));

    int32_t const coordRank = fused ? 3 : 4;
    struct Combo
    {
        char const* label;
        DataType x, c, y;
        TensorFormat fx, fc, fy;
    };
    auto constexpr kL = TensorFormat::kLINEAR;
    auto constexpr kH8 = TensorFormat::kHWC8;
    auto constexpr kF = DataType::kFLOAT;
    auto constexpr kH = DataType::kHALF;
    Combo const combos[] = {
        {"f32_f32_f32", kF, kF, kF, kL, kL, kL},
        {"f16_f16_f16", kH, kH, kH, kL, kL, kL},
        {"f16_f32_f16", kH, kF, kH, kL, kL, kL},
        {"f32_f16_f32", kF, kH, kF, kL, kL, kL},
        {"f32_f32_f16", kF, kF, kH, kL, kL, kL},
        {"i32_f32_i32", DataType::kINT32, kF, DataType::kINT32, kL, kL, kL},
        {"hwc8_f16", kH, kH, kH, kH8, kL, kH8},
        {"hwc8_f16_f32coords", kH, kF, kH, kH8, kL, kH8},
        {"hwc8_coords", kH, kH, kH, kH8, kH8, kH8},
        {"hwc8_f32", kF, kF, kF, kH8, kL, kH8},
        {"hwc8_to_linear", kH, kH, kH, kH8, kL, kL},
    };
    for (Combo const& c : combos)
    {
        DynamicPluginTensorDesc io[3] = {desc(c.x, c.fx, 4), desc(c.c, c.fc, coordRank), desc(c.y, c.fy, 4)};
        bool ok = true;
        for (int32_t pos = 0; pos < 3; ++pos)
        {
            ok = ok && build->supportsFormatCombination(pos, io, 2, 1);
        }
        std::printf("format %s %s %d\n", name.c_str(), c.label, ok ? 1 : 0);
    }
    DynamicPluginTensorDesc in[2] = {desc(DataType::kFLOAT, TensorFormat::kLINEAR, 4),
        desc(DataType::kFLOAT, TensorFormat::kLINEAR, coordRank)};
    DynamicPluginTensorDesc out[1] = {desc(DataType::kFLOAT, TensorFormat::kLINEAR, 4)};
    std::printf("configure %s %d %d\n", name.c_str(), build->configurePlugin(in, 2, out, 1),
        build->configurePlugin(in, 1, out, 1));

    // enqueue never crashes: null buffers, mismatched shapes and a machine without a driver all
    // give -1. Consistent shapes: X [4,4,4,4], Y [4,4,7,9], coordinates to match.
    PluginTensorDesc inDesc[2] = {in[0].desc, in[1].desc};
    PluginTensorDesc outDesc[1] = {out[0].desc};
    outDesc[0].dims.d[2] = 7;
    outDesc[0].dims.d[3] = 9;
    Dims& c = inDesc[1].dims;
    if (fused)
    {
        c.d[1] = name == "STNAffineGridSample" ? 2 : 3;
        c.d[2] = 3;
    }
    else
    {
        c.d[1] = 7;
        c.d[2] = 9;
        c.d[3] = 2;
    }
    std::printf("enqueue_null %s %d\n", name.c_str(), runtime->enqueue(inDesc, outDesc, nullptr, nullptr, nullptr, nullptr));
    float dummy[4] = {};
    void const* inputs[2] = {dummy, dummy};
    void* outputs[1] = {dummy};
    int const errorsBefore = gFinder.mLogger.mErrors;
    int32_t const nodevice = runtime->enqueue(inDesc, outDesc, inputs, outputs, nullptr, nullptr);
    std::printf("enqueue_nodevice %s %d %d %s\n", name.c_str(), nodevice, gFinder.mLogger.mErrors > errorsBefore ? 1 : 0,
        gFinder.mLogger.mLast.c_str());
    c.d[0] = 5; // coordinates for a different batch than X: must be refused before any launch
    int32_t const badShape = runtime->enqueue(inDesc, outDesc, inputs, outputs, nullptr, nullptr);
    std::printf("enqueue_badshape %s %d %s\n", name.c_str(), badShape, gFinder.mLogger.mLast.c_str());

    delete plugin;
    delete again;
    delete copy;

    // Invalid fields: nullptr and a logged reason, never an abort.
    struct Bad
    {
        char const* label;
        char const* field;
        int32_t value;
    };
    Bad const bads[] = {{"mode3", "interpolation_mode", 3}, {"padding-1", "padding_mode", -1},
        {"align2", "align_corners", 2}, {"height0", "out_height", 0}};
    for (Bad const& b : bads)
    {
        if (!fused && !std::strcmp(b.field, "out_height"))
        {
            continue;
        }
        Fields f = good;
        for (size_t i = 0; i < f.names.size(); ++i)
        {
            if (f.names[i] == b.field)
            {
                f.values[i] = b.value;
            }
        }
        int const before = gFinder.mLogger.mErrors;
        IPluginV3* p = creator->createPlugin("bad", f.collection(), TensorRTPhase::kBUILD);
        std::printf("bad %s %s %d %d %s\n", name.c_str(), b.label, p == nullptr ? 1 : 0,
            gFinder.mLogger.mErrors > before ? 1 : 0, gFinder.mLogger.mLast.c_str());
        delete p;
    }
    if (fused)
    {
        Fields missing;
        missing.add("interpolation_mode", 0);
        IPluginV3* p = creator->createPlugin("bad", missing.collection(), TensorRTPhase::kBUILD);
        std::printf("bad %s missing_size %d 1 %s\n", name.c_str(), p == nullptr ? 1 : 0, gFinder.mLogger.mLast.c_str());
        delete p;
    }
    float wrongType = 1.F;
    PluginField floatField("interpolation_mode", &wrongType, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection floatFc{1, &floatField};
    IPluginV3* p = creator->createPlugin("bad", &floatFc, TensorRTPhase::kBUILD);
    std::printf("bad %s float_field %d 1 %s\n", name.c_str(), p == nullptr ? 1 : 0, gFinder.mLogger.mLast.c_str());
    delete p;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libstn_gridsample_plugin.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("dlopen_error %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    std::printf("symbols %d %d\n", getCreators != nullptr ? 1 : 0, setLoggerFinder != nullptr ? 1 : 0);
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    setLoggerFinder(&gFinder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    std::printf("count %d\n", n);
    for (int32_t i = 0; i < n; ++i)
    {
        InterfaceInfo const info = creators[i]->getInterfaceInfo();
        std::printf("interface %s %d\n", info.kind, info.major);
        checkCreator(static_cast<IPluginCreatorV3One*>(creators[i]));
    }
    return 0;
}
