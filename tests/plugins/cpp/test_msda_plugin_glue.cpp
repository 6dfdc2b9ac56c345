// Checks of the plugin glue that need TensorRT's headers but no GPU, no TensorRT library and no nvcc: shape checks,
// format combinations, the arguments enqueue hands the launcher (a stub here), that problems reach TensorRT's
// logger (through setLoggerFinder) instead of crashing, and the exception barrier of every method: an exception
// thrown inside (DETR_MSDA_FAULT_INJECTION) is reported to the attached error recorder or else the logger, and the
// method returns its failure value. Built by tests/plugins/cpp/CMakeLists.txt and run by
// tests/plugins/test_msda_plugin_glue.py; prints one line per failed check, exits non-zero.
#include "msdaContract.h"
#include "msdaLauncher.h"
#include "msdaPlugin.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

using namespace nvinfer1;

namespace
{

int gFailures = 0;

//! What enqueue passed to the launcher, and what the launcher answers.
struct LauncherCall
{
    int calls{0};
    int valueType{-1};
    int indexIsInt64{-1};
    int locationType{-1};
    int64_t sizes[7]{};
    void const* value{nullptr};
    void* output{nullptr};
    cudaStream_t stream{nullptr};
    int status{0};
} gLauncher;

//! Which method throws what, for the exception barrier's checks.
std::string gThrowingMethod;
std::function<void()> gThrow;

void injectFault(char const* method)
{
    if (gThrow && gThrowingMethod == method)
    {
        gThrow();
    }
}

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

class RecordingErrorRecorder : public IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(errors.size());
    }
    ErrorCode getErrorCode(int32_t index) const noexcept override
    {
        return errors.at(index).first;
    }
    ErrorDesc getErrorDesc(int32_t index) const noexcept override
    {
        return errors.at(index).second.c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        errors.clear();
    }
    bool reportError(ErrorCode code, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(code, desc);
        return true;
    }
    RefCount incRefCount() noexcept override
    {
        return ++references;
    }
    RefCount decRefCount() noexcept override
    {
        return --references;
    }
    std::vector<std::pair<ErrorCode, std::string>> errors;
    RefCount references{0};
};

class ResourceContext : public IPluginResourceContext
{
public:
    explicit ResourceContext(IErrorRecorder* recorder)
        : mRecorder(recorder)
    {
    }
    IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return mRecorder;
    }

private:
    IErrorRecorder* mRecorder;
};

PluginTensorDesc runtimeDesc(Dims const& shape, DataType type)
{
    PluginTensorDesc desc{};
    desc.dims = shape;
    desc.type = type;
    desc.format = TensorFormat::kLINEAR;
    return desc;
}

//! The builder getOutputShapes receives; ours never calls it (the output's dims are the inputs').
class NoExprBuilder : public IExprBuilder
{
};

//! Whether a check made a plugin (deleting it).
bool madePlugin(IPluginV3* plugin)
{
    bool const there = plugin != nullptr;
    delete plugin;
    return there;
}

bool endsWith(std::string const& text, std::string const& tail)
{
    return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

} // namespace

// The launcher the glue calls from enqueue; the real one (msdaLauncher.cu) needs nvcc and a GPU.
extern "C" int detr_msda_forward_cuda(void const* value, int valueType, void const*, void const*, int indexIsInt64,
    void const*, void const*, int locationType, void* output, int64_t batch, int64_t numValues, int32_t numHeads,
    int32_t headDim, int64_t numQueries, int32_t numLevels, int32_t numPoints, cudaStream_t stream)
{
    ++gLauncher.calls;
    gLauncher.valueType = valueType;
    gLauncher.indexIsInt64 = indexIsInt64;
    gLauncher.locationType = locationType;
    int64_t const sizes[7] = {batch, numValues, numHeads, headDim, numQueries, numLevels, numPoints};
    std::copy(sizes, sizes + 7, gLauncher.sizes);
    gLauncher.value = value;
    gLauncher.output = output;
    gLauncher.stream = stream;
    return gLauncher.status;
}

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
    // Fields other than the contract's attributes are ignored with a warning, nameless ones too.
    PluginField fields[3] = {PluginField("plugin_version"), PluginField("im2col_step"), PluginField(nullptr)};
    PluginFieldCollection const collection{3, fields};
    logger.messages.clear();
    made = creator->createPlugin("attention", &collection, TensorRTPhase::kBUILD);
    expect(made != nullptr && logger.messages.size() == 2
            && logger.messages[0] == "MSDeformAttn: ignoring unknown field 'im2col_step'",
        "unknown fields are ignored with a warning");
    delete made;

    // enqueue hands the launcher the tensors' types and sizes: fp16 value, int64 indices, fp32 sampling inputs.
    std::vector<PluginTensorDesc> runtimeInputs = {runtimeDesc(goodShapes()[0], DataType::kHALF),
        runtimeDesc(goodShapes()[1], DataType::kINT64), runtimeDesc(goodShapes()[2], DataType::kINT64),
        runtimeDesc(goodShapes()[3], DataType::kFLOAT), runtimeDesc(goodShapes()[4], DataType::kFLOAT)};
    PluginTensorDesc runtimeOutput = runtimeDesc(dims({2, 300, 8, 32}), DataType::kHALF);
    float valueBuffer[1];
    float outputBuffer[1];
    void const* tensors[5] = {valueBuffer, nullptr, nullptr, nullptr, nullptr};
    void* outputs[1] = {outputBuffer};
    auto* stream = reinterpret_cast<cudaStream_t>(uintptr_t{0x5eed});
    expect(plugin.onShapeChange(runtimeInputs.data(), 5, &runtimeOutput, 1) == 0, "onShapeChange accepts good shapes");
    expect(plugin.enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == 0, "enqueue");
    int64_t const expectedSizes[7] = {2, 100, 8, 32, 300, 4, 4};
    expect(gLauncher.calls == 1 && gLauncher.valueType == DETR_MSDA_HALF && gLauncher.indexIsInt64 == 1
            && gLauncher.locationType == DETR_MSDA_FLOAT
            && std::equal(expectedSizes, expectedSizes + 7, gLauncher.sizes) && gLauncher.value == valueBuffer
            && gLauncher.output == outputBuffer && gLauncher.stream == stream,
        "enqueue passes types, sizes, tensors and stream to the launcher");
    gLauncher.status = 700;
    expect(plugin.enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == -1
            && endsWith(logger.messages.back(), "kernel launch failed with status 700"),
        "a failed launch fails enqueue and is logged");
    gLauncher.status = 0;

    // The exception barrier: an exception thrown inside any method is reported and the method fails.
    detr_deploy::msda::gFaultInjection = injectFault;
    DynamicPluginTensorDesc goodInputs[5];
    for (int32_t i = 0; i < 5; ++i)
    {
        goodInputs[i] = describe(goodShapes()[i], DataType::kFLOAT);
    }
    DimsExprs shapeExprs[5]{};
    shapeExprs[0].nbDims = 4;
    shapeExprs[3].nbDims = 6;
    DimsExprs outputExprs[1]{};
    NoExprBuilder builder;
    DataType const floatTypes[5] = {DataType::kFLOAT, DataType::kINT32, DataType::kINT32, DataType::kFLOAT,
        DataType::kFLOAT};
    struct Method
    {
        char const* name;
        std::function<bool(MsdaPlugin&)> failed; // calls the method, true when it returned its failure value
    };
    std::vector<Method> const methods = {
        {"getCapabilityInterface",
            [](MsdaPlugin& p) { return p.getCapabilityInterface(PluginCapabilityType::kCORE) == nullptr; }},
        {"clone", [](MsdaPlugin& p) { return !madePlugin(p.clone()); }},
        {"getPluginName", [](MsdaPlugin& p) { return p.getPluginName() == nullptr; }},
        {"getPluginVersion", [](MsdaPlugin& p) { return p.getPluginVersion() == nullptr; }},
        {"getPluginNamespace", [](MsdaPlugin& p) { return p.getPluginNamespace() == nullptr; }},
        {"getNbOutputs", [](MsdaPlugin& p) { return p.getNbOutputs() == -1; }},
        {"configurePlugin", [&](MsdaPlugin& p) { return p.configurePlugin(goodInputs, 5, &output, 1) == -1; }},
        {"getOutputDataTypes",
            [&](MsdaPlugin& p) { return p.getOutputDataTypes(&outputType, 1, floatTypes, 5) == -1; }},
        {"getOutputShapes",
            [&](MsdaPlugin& p) {
                return p.getOutputShapes(shapeExprs, 5, nullptr, 0, outputExprs, 1, builder) == -1;
            }},
        {"supportsFormatCombination",
            [&](MsdaPlugin& p) { return !p.supportsFormatCombination(0, goodInputs, 5, 1); }},
        {"onShapeChange",
            [&](MsdaPlugin& p) { return p.onShapeChange(runtimeInputs.data(), 5, &runtimeOutput, 1) == -1; }},
        {"enqueue",
            [&](MsdaPlugin& p) {
                return p.enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == -1;
            }},
        {"attachToContext", [](MsdaPlugin& p) { return !madePlugin(p.attachToContext(nullptr)); }},
        {"getFieldsToSerialize", [](MsdaPlugin& p) { return p.getFieldsToSerialize() == nullptr; }},
    };
    for (Method const& method : methods)
    {
        expect(!method.failed(plugin), std::string(method.name) + " works without a fault");
        gThrowingMethod = method.name;
        gThrow = [] { throw std::runtime_error("injected fault"); };
        logger.messages.clear();
        expect(method.failed(plugin), std::string(method.name) + " returns its failure value after an exception");
        expect(logger.messages.size() == 1
                && logger.messages[0] == std::string("MSDeformAttn: ") + method.name + " threw: injected fault",
            std::string(method.name) + "'s exception is logged");
        gThrow = [] { throw 42; };
        expect(method.failed(plugin), std::string(method.name) + " survives an exception of unknown type");
        gThrow = [] { throw std::bad_alloc(); };
        expect(method.failed(plugin)
                && endsWith(logger.messages.back(), std::string(method.name) + " threw: out of memory"),
            std::string(method.name) + " survives bad_alloc");
    }
    gThrow = nullptr;
    std::vector<std::string> const creatorMethods
        = {"createPlugin", "getFieldNames", "getPluginName", "getPluginVersion", "getPluginNamespace"};
    int32_t creatorCount = 0;
    auto* theCreator = static_cast<IPluginCreatorV3One*>(getCreators(creatorCount)[0]);
    for (std::string const& name : creatorMethods)
    {
        gThrowingMethod = name;
        gThrow = [] { throw std::runtime_error("injected fault"); };
        logger.messages.clear();
        bool failed = false;
        if (name == "createPlugin")
        {
            failed = theCreator->createPlugin("attention", nullptr, TensorRTPhase::kBUILD) == nullptr;
        }
        else if (name == "getFieldNames")
        {
            failed = theCreator->getFieldNames() == nullptr;
        }
        else if (name == "getPluginName")
        {
            failed = theCreator->getPluginName() == nullptr;
        }
        else if (name == "getPluginVersion")
        {
            failed = theCreator->getPluginVersion() == nullptr;
        }
        else
        {
            failed = theCreator->getPluginNamespace() == nullptr;
        }
        expect(failed && logger.messages.size() == 1
                && logger.messages[0] == "MSDeformAttn: " + name + " threw: injected fault",
            "creator's " + name + " returns its failure value and logs the exception");
    }
    gThrow = nullptr;

    // Attached to an execution context with an error recorder, the plugin reports exceptions there instead.
    RecordingErrorRecorder recorder;
    ResourceContext context(&recorder);
    IPluginV3* attached = plugin.attachToContext(&context);
    auto* runtime = attached != nullptr
        ? static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
        : nullptr;
    expect(runtime != nullptr, "attachToContext gives a plugin");
    if (runtime != nullptr)
    {
        gThrowingMethod = "enqueue";
        gThrow = [] { throw std::runtime_error("injected fault"); };
        logger.messages.clear();
        expect(runtime->enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == -1,
            "attached enqueue fails after an exception");
        expect(recorder.errors.size() == 1 && recorder.errors[0].first == ErrorCode::kUNSPECIFIED_ERROR
                && recorder.errors[0].second == "MSDeformAttn: enqueue threw: injected fault"
                && logger.messages.empty(),
            "the exception goes to the context's error recorder, not the logger");
        gThrow = [] { throw std::bad_alloc(); };
        expect(runtime->enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == -1
                && recorder.errors.size() == 2 && recorder.errors[1].first == ErrorCode::kFAILED_ALLOCATION,
            "bad_alloc is recorded as a failed allocation");
        gThrow = nullptr;
        expect(runtime->enqueue(runtimeInputs.data(), &runtimeOutput, tensors, outputs, nullptr, stream) == 0,
            "attached enqueue works without a fault");
    }
    delete attached;
    detr_deploy::msda::gFaultInjection = nullptr;

    // The logger finder may be replaced while other threads report: no torn reads, every message lands somewhere.
    RecordingLogger otherLogger;
    Finder otherFinder(&otherLogger);
    std::atomic<bool> stop{false};
    std::thread swapper([&] {
        while (!stop.load())
        {
            setLoggerFinder(&otherFinder);
            setLoggerFinder(&finder);
        }
    });
    logger.messages.clear();
    for (int i = 0; i < 2000; ++i)
    {
        plugin.configurePlugin(inputs.data(), 5, &output, 1);
    }
    stop = true;
    swapper.join();
    expect(logger.messages.size() + otherLogger.messages.size() == 2000, "reports while the finder changes");

    setLoggerFinder(nullptr);
    if (gFailures == 0)
    {
        std::printf("all checks passed\n");
    }
    return gFailures == 0 ? 0 : 1;
}
