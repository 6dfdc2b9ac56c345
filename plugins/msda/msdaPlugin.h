/*
 * TensorRT glue of the MSDeformAttn plugin (IPluginV3 with the OneCore/OneBuild/OneRuntime capabilities).
 * The math lives in msdaSampling.h, the launch in msdaLauncher.cu. Every method TensorRT calls is noexcept and runs
 * its body behind an exception barrier (msdaPlugin.cpp): an exception is reported to the error recorder of the
 * execution context the plugin is attached to, or else to TensorRT's logger, and the method returns its failure
 * value (-1, nullptr, false).
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace detr_deploy
{
namespace msda
{

class MsdaPlugin final : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime
{
public:
    MsdaPlugin() = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    nvinfer1::PluginFieldCollection mNoFields{};
    //! The execution context's recorder, set on the clone that attachToContext returns; null before that.
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
};

class MsdaPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    MsdaPluginCreator() = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    nvinfer1::PluginFieldCollection mNoFields{};
};

//! Shape checks shared by build time (dims may be -1) and run time. Empty when the shapes fit, else why not.
std::string checkShapes(nvinfer1::Dims const* inputs, int32_t nbInputs);

#if defined(DETR_MSDA_FAULT_INJECTION)
//! Test builds only (tests/plugins/cpp defines the macro; the plugin library never does): when set, every guarded
//! method calls it first with its own name, so a test can throw from inside any method and check the barrier.
extern void (*gFaultInjection)(char const* method);
#endif

} // namespace msda
} // namespace detr_deploy
