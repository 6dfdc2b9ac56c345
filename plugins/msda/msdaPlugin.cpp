#include "msdaPlugin.h"

#include "msdaContract.h"
#include "msdaLauncher.h"

#include <cstring>
#include <new>

using namespace nvinfer1;

namespace detr_deploy
{
namespace msda
{
namespace
{

ILoggerFinder* gLoggerFinder{nullptr};

//! Problems go to TensorRT's logger (when TensorRT gave us one) instead of crashing the caller.
void report(ILogger::Severity severity, std::string const& message) noexcept
{
    if (gLoggerFinder != nullptr)
    {
        if (ILogger* logger = gLoggerFinder->findLogger())
        {
            logger->log(severity, (std::string(kPLUGIN_NAME) + ": " + message).c_str());
        }
    }
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
int32_t validateInputs(Descriptor const* in, int32_t nbInputs) noexcept
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

IPluginCapability* MsdaPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* MsdaPlugin::clone() noexcept
{
    return new (std::nothrow) MsdaPlugin(*this);
}

char const* MsdaPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* MsdaPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* MsdaPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t MsdaPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t MsdaPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbOutputs != 1)
    {
        report(ILogger::Severity::kERROR, "expects 1 output");
        return -1;
    }
    return validateInputs(in, nbInputs);
}

int32_t MsdaPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != kNB_INPUTS || !isActivationType(inputTypes[0]))
    {
        report(ILogger::Severity::kERROR, "value must be float, half or bfloat16");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t MsdaPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
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
}

bool MsdaPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
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
}

int32_t MsdaPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept
{
    return validateInputs(in, nbInputs);
}

int32_t MsdaPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& value = inputDesc[0].dims;
    Dims const& locations = inputDesc[3].dims;
    int const status = detr_msda_forward_cuda(inputs[0], static_cast<int>(inputDesc[0].type), inputs[1], inputs[2],
        inputDesc[1].type == DataType::kINT64 ? 1 : 0, inputs[3], inputs[4], static_cast<int>(inputDesc[3].type),
        outputs[0], value.d[0], value.d[1], static_cast<int32_t>(value.d[2]), static_cast<int32_t>(value.d[3]),
        locations.d[1], static_cast<int32_t>(locations.d[3]), static_cast<int32_t>(locations.d[4]), stream);
    if (status != 0)
    {
        report(ILogger::Severity::kERROR, "kernel launch failed with status " + std::to_string(status));
        return -1;
    }
    return 0;
}

IPluginV3* MsdaPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* MsdaPlugin::getFieldsToSerialize() noexcept
{
    return &mNoFields;
}

IPluginV3* MsdaPluginCreator::createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    // The parser may pass the node's attributes along; only the contract's attribute names are expected.
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        bool known = false;
        for (char const* name : kATTRIBUTE_NAMES)
        {
            known = known || std::strcmp(fc->fields[i].name, name) == 0;
        }
        if (!known)
        {
            report(ILogger::Severity::kWARNING, std::string("ignoring unknown field '") + fc->fields[i].name + "'");
        }
    }
    return new (std::nothrow) MsdaPlugin();
}

PluginFieldCollection const* MsdaPluginCreator::getFieldNames() noexcept
{
    return &mNoFields;
}

char const* MsdaPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* MsdaPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* MsdaPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

} // namespace msda
} // namespace detr_deploy

// Entry points of a plugin library: IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and
// get_plugin_registry().load_library look these up by name.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    detr_deploy::msda::gLoggerFinder = finder;
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators)
{
    static detr_deploy::msda::MsdaPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
