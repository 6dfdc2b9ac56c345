// Checks of the plugin glue that need TensorRT's headers but no GPU and no TensorRT library: shape checks,
// format combinations, and that problems reach TensorRT's logger (through setLoggerFinder) instead of crashing.
// Built and run by tests/plugins/test_msda_plugin_glue.py; prints one line per failed check, exits non-zero.
#include "msdaContract.h"
#include "msdaPlugin.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void expect(bool condition, std::string const& what)
{
    if (!condition)
    {
        std::printf("FAILED: %s\n", what.c_str());
        ++gFailures;
    }
}

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* message) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            messages.emplace_back(message);
        }
    }
    std::vector<std::string> messages;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

Dims dims(std::vector<int64_t> const& values)
{
    Dims result{};
    result.nbDims = static_cast<int32_t>(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        result.d[i] = values[i];
    }
    return result;
}

std::vector<Dims> goodShapes(int64_t levels = 4)
{
    // N=2, S=100, M=8, D=32, Lq=300, L, P=4
    return {dims({2, 100, 8, 32}), dims({levels, 2}), dims({levels}), dims({2, 300, 8, levels, 4, 2}),
        dims({2, 300, 8, levels, 4})};
}

DynamicPluginTensorDesc describe(Dims const& shape, DataType type)
{
    DynamicPluginTensorDesc desc{};
    desc.desc.dims = shape;
    desc.desc.type = type;
    desc.desc.format = TensorFormat::kLINEAR;
    desc.min = desc.opt = desc.max = shape;
    return desc;
}

} // namespace

int main()
{
    using detr_deploy::msda::checkShapes;
    using detr_deploy::msda::MsdaPlugin;

    // Shape checks: fine shapes pass, dynamic (-1) dimensions pass, each kind of mismatch is named.
    expect(checkShapes(goodShapes().data(), 5).empty(), "good shapes pass");
    std::vector<Dims> dynamic = {dims({-1, -1, 8, 32}), dims({4, 2}), dims({4}), dims({-1, -1, 8, 4, 4, 2}),
        dims({-1, -1, 8, 4, 4})};
    expect(checkShapes(dynamic.data(), 5).empty(), "dynamic shapes pass");
    std::vector<Dims> badRank = goodShapes();
    badRank[3] = dims({2, 300, 8, 4, 8});
    expect(checkShapes(badRank.data(), 5).find("sampling_locations' must have rank 6") != std::string::npos,
        "rank of sampling_locations is checked");
    std::vector<Dims> badLevels = goodShapes();
    badLevels[2] = dims({3});
    expect(checkShapes(badLevels.data(), 5).find("number of levels") != std::string::npos, "levels are checked");
    std::vector<Dims> badHeads = goodShapes();
    badHeads[4] = dims({2, 300, 4, 4, 4});
    expect(checkShapes(badHeads.data(), 5).find("heads M") != std::string::npos, "heads are checked");
    std::vector<Dims> tooMany = goodShapes(detr_deploy::msda::kMAX_LEVELS + 1);
    expect(checkShapes(tooMany.data(), 5).find("at most") != std::string::npos, "level limit is checked");
    expect(!checkShapes(goodShapes().data(), 4).empty(), "input count is checked");

    // Problems go to TensorRT's logger and fail the call.
    RecordingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);
    MsdaPlugin plugin;
    std::vector<DynamicPluginTensorDesc> inputs;
    for (Dims const& shape : badLevels)
    {
        inputs.push_back(describe(shape, DataType::kFLOAT));
    }
    DynamicPluginTensorDesc output = describe(dims({2, 300, 8, 32}), DataType::kFLOAT);
    expect(plugin.configurePlugin(inputs.data(), 5, &output, 1) == -1, "configurePlugin refuses bad shapes");
    expect(!logger.messages.empty() && logger.messages.back().rfind("MSDeformAttn: ", 0) == 0,
        "the refusal is logged through TensorRT's logger");

    // Format combinations: fp16 value with fp32 sampling inputs and int32 indices is fine; mixed index types,
    // an int value and a sampling type other than fp32 or the value's are not.
    auto combination = [&](DataType value, DataType index0, DataType index1, DataType sampling, DataType out) {
        std::vector<DynamicPluginTensorDesc> all
            = {describe(goodShapes()[0], value), describe(goodShapes()[1], index0), describe(goodShapes()[2], index1),
                describe(goodShapes()[3], sampling), describe(goodShapes()[4], sampling),
                describe(dims({2, 300, 8, 32}), out)};
        bool supported = true;
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            supported = supported && plugin.supportsFormatCombination(pos, all.data(), 5, 1);
        }
        return supported;
    };
    expect(combination(DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kFLOAT, DataType::kHALF),
        "fp16 value with fp32 sampling inputs");
    expect(combination(DataType::kBF16, DataType::kINT64, DataType::kINT64, DataType::kBF16, DataType::kBF16),
        "bf16 throughout with int64 indices");
    expect(!combination(DataType::kFLOAT, DataType::kINT32, DataType::kINT64, DataType::kFLOAT, DataType::kFLOAT),
        "mixed index types are refused");
    expect(!combination(DataType::kFLOAT, DataType::kINT32, DataType::kINT32, DataType::kHALF, DataType::kFLOAT),
        "fp16 sampling inputs under an fp32 value are refused");
    expect(!combination(DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kHALF, DataType::kFLOAT),
        "an output type other than the value's is refused");

    DataType outputType{};
    DataType const inputTypes[5] = {DataType::kHALF, DataType::kINT64, DataType::kINT64, DataType::kFLOAT,
        DataType::kFLOAT};
    expect(plugin.getOutputDataTypes(&outputType, 1, inputTypes, 5) == 0 && outputType == DataType::kHALF,
        "output type follows value");

    // The creator answers to the contract's name and makes plugins that do too.
    int32_t count = 0;
    auto* creator = static_cast<IPluginCreatorV3One*>(getCreators(count)[0]);
    expect(count == 1, "one creator");
    expect(std::strcmp(creator->getPluginName(), "MSDeformAttn") == 0
            && std::strcmp(creator->getPluginNamespace(), "detr_deploy") == 0
            && std::strcmp(creator->getPluginVersion(), "1") == 0,
        "creator name, namespace and version");
    IPluginV3* made = creator->createPlugin("attention", nullptr, TensorRTPhase::kBUILD);
    auto* core = made ? static_cast<IPluginV3OneCore*>(made->getCapabilityInterface(PluginCapabilityType::kCORE))
                      : nullptr;
    expect(core != nullptr && std::strcmp(core->getPluginName(), "MSDeformAttn") == 0, "created plugin");
    delete made;

    setLoggerFinder(nullptr);
    if (gFailures == 0)
    {
        std::printf("all checks passed\n");
    }
    return gFailures == 0 ? 0 : 1;
}
