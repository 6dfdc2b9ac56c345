#include "msdaPlugin.h"

#include "msdaContract.h"
#include "msdaLauncher.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>

using namespace nvinfer1;

namespace detr_deploy
{
namespace msda
{

#if defined(DETR_MSDA_FAULT_INJECTION)
void (*gFaultInjection)(char const* method) = nullptr;
#endif

namespace
{

//! setLoggerFinder runs on the thread that loads the library while plugin methods may already run on others, so
//! the finder is written and read under a lock (TensorRT's own plugin libraries guard theirs the same way). The
//! lock is also held around findLogger(), which hands out the logger of the caller's thread.
class LoggerFinderSlot
{
public:
    void set(ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> const lock(mMutex);
        mFinder = finder;
    }

    ILogger* logger()
    {
        std::lock_guard<std::mutex> const lock(mMutex);
        return mFinder != nullptr ? mFinder->findLogger() : nullptr;
    }

private:
    std::mutex mMutex;
    ILoggerFinder* mFinder{nullptr};
};

LoggerFinderSlot gLoggerFinder;

// Reports are formatted into a fixed buffer: reporting must work when the problem is an exhausted heap.
constexpr size_t kMAX_REPORT = 1024;

//! Problems go to TensorRT's logger (when TensorRT gave us one) instead of crashing the caller.
void report(ILogger::Severity severity, char const* message) noexcept
{
    try
    {
        if (ILogger* logger = gLoggerFinder.logger())
        {
            char line[kMAX_REPORT];
            std::snprintf(line, sizeof(line), "%s: %s", kPLUGIN_NAME, message);
            logger->log(severity, line);
        }
    }
    catch (...)
    {
        // A finder or lock that throws leaves nobody to tell; the caller still gets its failure value.
    }
}

void report(ILogger::Severity severity, std::string const& message) noexcept
{
    report(severity, message.c_str());
}

//! An exception caught at the API boundary: to the error recorder of the execution context the plugin is attached
//! to, when it has one (the application then finds it beside TensorRT's own errors), else to the logger.
void reportCaught(IErrorRecorder* recorder, ErrorCode code, char const* method, char const* what) noexcept
{
    what = what != nullptr ? what : "";
    if (recorder != nullptr)
    {
        char line[kMAX_REPORT];
        std::snprintf(line, sizeof(line), "%s: %s threw: %s", kPLUGIN_NAME, method, what);
        recorder->reportError(code, line);
        return;
    }
    char line[kMAX_REPORT];
    std::snprintf(line, sizeof(line), "%s threw: %s", method, what);
    report(ILogger::Severity::kERROR, line);
}

//! The exception barrier around the body of every method TensorRT calls: these are noexcept, and an exception
//! leaving one would terminate the application. It is reported instead and the method returns `failure`.
template <typename Result, typename Body>
Result guarded(char const* method, IErrorRecorder* recorder, Result failure, Body&& body) noexcept
{
    try
    {
#if defined(DETR_MSDA_FAULT_INJECTION)
        if (gFaultInjection != nullptr)
        {
            gFaultInjection(method);
        }
#endif
        return body();
    }
    catch (std::bad_alloc const&)
    {
        reportCaught(recorder, ErrorCode::kFAILED_ALLOCATION, method, "out of memory");
    }
    catch (std::exception const& e)
    {
        reportCaught(recorder, ErrorCode::kUNSPECIFIED_ERROR, method, e.what());
    }
    catch (...)
    {
        reportCaught(recorder, ErrorCode::kUNSPECIFIED_ERROR, method, "an exception of unknown type");
    }
    return failure;
}

bool agree(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

Dims dimsOf(PluginTensorDesc const& desc)
{
    return desc.dims;
}

Dims dimsOf(DynamicPluginTensorDesc const& desc)
{
    return desc.desc.dims;
}

} // namespace

//! checkShapes on build-time (dims may be -1) or run-time descriptors; problems go to TensorRT's logger.
template <typename Descriptor>
int32_t validateInputs(Descriptor const* in, int32_t nbInputs)
{
    if (nbInputs != kNB_INPUTS)
    {
        report(ILogger::Severity::kERROR, "expects " + std::to_string(kNB_INPUTS) + " inputs");
        return -1;
    }
    Dims dims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        dims[i] = dimsOf(in[i]);
    }
    std::string const problem = checkShapes(dims, nbInputs);
    if (!problem.empty())
    {
        report(ILogger::Severity::kERROR, problem);
        return -1;
    }
    return 0;
}

namespace
{

bool isActivationType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

} // namespace

std::string checkShapes(Dims const* inputs, int32_t nbInputs)
{
    if (nbInputs != kNB_INPUTS)
    {
        return "expects " + std::to_string(kNB_INPUTS) + " inputs, got " + std::to_string(nbInputs);
    }
    int32_t const ranks[kNB_INPUTS] = {4, 2, 1, 6, 5};
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        if (inputs[i].nbDims != ranks[i])
        {
            return std::string("input '") + kINPUT_NAMES[i] + "' must have rank " + std::to_string(ranks[i])
                + ", got " + std::to_string(inputs[i].nbDims);
        }
    }
    Dims const& value = inputs[0];
    Dims const& shapes = inputs[1];
    Dims const& starts = inputs[2];
    Dims const& locations = inputs[3];
    Dims const& weights = inputs[4];
    if (!agree(shapes.d[1], 2) || !agree(locations.d[5], 2))
    {
        return "spatial_shapes must be [L, 2] and sampling_locations [N, Lq, M, L, P, 2]";
    }
    if (!agree(shapes.d[0], starts.d[0]) || !agree(shapes.d[0], locations.d[3]) || !agree(locations.d[3], weights.d[3]))
    {
        return "the number of levels L differs between spatial_shapes, level_start_index and the sampling inputs";
    }
    if (shapes.d[0] > kMAX_LEVELS)
    {
        return "at most " + std::to_string(kMAX_LEVELS) + " levels are supported";
    }
    if (!agree(value.d[0], locations.d[0]) || !agree(locations.d[0], weights.d[0]))
    {
        return "batch N differs between value, sampling_locations and attention_weights";
    }
    if (!agree(value.d[2], locations.d[2]) || !agree(locations.d[2], weights.d[2]))
    {
        return "heads M differ between value, sampling_locations and attention_weights";
    }
    if (!agree(locations.d[1], weights.d[1]) || !agree(locations.d[4], weights.d[4]))
    {
        return "queries Lq or points P differ between sampling_locations and attention_weights";
    }
    return {};
}

// Every method below is one guarded(...) call: the name it reports under, the recorder to report to, the value it
// returns on failure, and the body.

IPluginCapability* MsdaPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    return guarded<IPluginCapability*>("getCapabilityInterface", mErrorRecorder, nullptr, [&]() -> IPluginCapability* {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    });
}

IPluginV3* MsdaPlugin::clone() noexcept
{
    return guarded<IPluginV3*>("clone", mErrorRecorder, nullptr, [&] { return new MsdaPlugin(*this); });
}

char const* MsdaPlugin::getPluginName() const noexcept
{
    return guarded<char const*>("getPluginName", mErrorRecorder, nullptr, [] { return kPLUGIN_NAME; });
}

char const* MsdaPlugin::getPluginVersion() const noexcept
{
    return guarded<char const*>("getPluginVersion", mErrorRecorder, nullptr, [] { return kPLUGIN_VERSION; });
}

char const* MsdaPlugin::getPluginNamespace() const noexcept
{
    return guarded<char const*>("getPluginNamespace", mErrorRecorder, nullptr, [] { return kPLUGIN_NAMESPACE; });
}

int32_t MsdaPlugin::getNbOutputs() const noexcept
{
    return guarded<int32_t>("getNbOutputs", mErrorRecorder, -1, [] { return 1; });
}

int32_t MsdaPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    return guarded<int32_t>("configurePlugin", mErrorRecorder, -1, [&] {
        if (nbOutputs != 1)
        {
            report(ILogger::Severity::kERROR, "expects 1 output");
            return -1;
        }
        return validateInputs(in, nbInputs);
    });
}

int32_t MsdaPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded<int32_t>("getOutputDataTypes", mErrorRecorder, -1, [&] {
        if (nbOutputs != 1 || nbInputs != kNB_INPUTS || !isActivationType(inputTypes[0]))
        {
            report(ILogger::Severity::kERROR, "value must be float, half or bfloat16");
            return -1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    });
}

int32_t MsdaPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    return guarded<int32_t>("getOutputShapes", mErrorRecorder, -1, [&] {
        if (nbInputs != kNB_INPUTS || nbOutputs != 1 || inputs[0].nbDims != 4 || inputs[3].nbDims != 6)
        {
            report(ILogger::Severity::kERROR, "value must be [N, S, M, D] and sampling_locations [N, Lq, M, L, P, 2]");
            return -1;
        }
        // [N, Lq, M, D]
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[3].d[1];
        outputs[0].d[2] = inputs[0].d[2];
        outputs[0].d[3] = inputs[0].d[3];
        return 0;
    });
}

bool MsdaPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guarded<bool>("supportsFormatCombination", mErrorRecorder, false, [&] {
        if (nbInputs != kNB_INPUTS || nbOutputs != 1 || pos < 0 || pos > kNB_INPUTS)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        switch (pos)
        {
        case 0: return isActivationType(desc.type);
        case 1: return desc.type == DataType::kINT32 || desc.type == DataType::kINT64;
        case 2: return desc.type == inOut[1].desc.type;
        // Sampling inputs may stay fp32 under an fp16/bf16 value: coordinates keep their precision.
        case 3: return desc.type == DataType::kFLOAT || desc.type == inOut[0].desc.type;
        case 4: return desc.type == inOut[3].desc.type;
        case 5: return desc.type == inOut[0].desc.type;
        default: return false;
        }
    });
}

int32_t MsdaPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept
{
    return guarded<int32_t>("onShapeChange", mErrorRecorder, -1, [&] { return validateInputs(in, nbInputs); });
}

int32_t MsdaPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void*, cudaStream_t stream) noexcept
{
    return guarded<int32_t>("enqueue", mErrorRecorder, -1, [&] {
        Dims const& value = inputDesc[0].dims;
        Dims const& locations = inputDesc[3].dims;
        int const status = detr_msda_forward_cuda(inputs[0], static_cast<int>(inputDesc[0].type), inputs[1],
            inputs[2], inputDesc[1].type == DataType::kINT64 ? 1 : 0, inputs[3], inputs[4],
            static_cast<int>(inputDesc[3].type), outputs[0], value.d[0], value.d[1], static_cast<int32_t>(value.d[2]),
            static_cast<int32_t>(value.d[3]), locations.d[1], static_cast<int32_t>(locations.d[3]),
            static_cast<int32_t>(locations.d[4]), stream);
        if (status != 0)
        {
            report(ILogger::Severity::kERROR, "kernel launch failed with status " + std::to_string(status));
            return -1;
        }
        return 0;
    });
}

IPluginV3* MsdaPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return guarded<IPluginV3*>("attachToContext", mErrorRecorder, nullptr, [&] {
        // TensorRT keeps the context (and its recorder) alive until it deletes the attached clone.
        auto attached = std::make_unique<MsdaPlugin>(*this);
        attached->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return attached.release();
    });
}

PluginFieldCollection const* MsdaPlugin::getFieldsToSerialize() noexcept
{
    return guarded<PluginFieldCollection const*>(
        "getFieldsToSerialize", mErrorRecorder, nullptr, [&] { return &mNoFields; });
}

// The creator belongs to no execution context, so it has no error recorder: its problems go to the logger.

IPluginV3* MsdaPluginCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    return guarded<IPluginV3*>("createPlugin", nullptr, nullptr, [&] {
        // The parser may pass the node's attributes along; only the contract's attribute names are expected.
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            char const* const field = fc->fields[i].name != nullptr ? fc->fields[i].name : "";
            bool known = false;
            for (char const* name : kATTRIBUTE_NAMES)
            {
                known = known || std::strcmp(field, name) == 0;
            }
            if (!known)
            {
                report(ILogger::Severity::kWARNING, std::string("ignoring unknown field '") + field + "'");
            }
        }
        return new MsdaPlugin();
    });
}

PluginFieldCollection const* MsdaPluginCreator::getFieldNames() noexcept
{
    return guarded<PluginFieldCollection const*>("getFieldNames", nullptr, nullptr, [&] { return &mNoFields; });
}

char const* MsdaPluginCreator::getPluginName() const noexcept
{
    return guarded<char const*>("getPluginName", nullptr, nullptr, [] { return kPLUGIN_NAME; });
}

char const* MsdaPluginCreator::getPluginVersion() const noexcept
{
    return guarded<char const*>("getPluginVersion", nullptr, nullptr, [] { return kPLUGIN_VERSION; });
}

char const* MsdaPluginCreator::getPluginNamespace() const noexcept
{
    return guarded<char const*>("getPluginNamespace", nullptr, nullptr, [] { return kPLUGIN_NAMESPACE; });
}

} // namespace msda
} // namespace detr_deploy

// Entry points of a plugin library: IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and
// get_plugin_registry().load_library look these up by name.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    try
    {
        detr_deploy::msda::gLoggerFinder.set(finder);
    }
    catch (...)
    {
        // Only the lock can throw (std::system_error); nothing may cross this C boundary.
    }
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static detr_deploy::msda::MsdaPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
