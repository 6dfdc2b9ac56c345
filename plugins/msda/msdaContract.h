/*
 * The names the exporter writes and the plugin answers to, and the storage-type codes of the C ABI.
 * detr_deploy/contract.py holds the same names and tests/plugins/test_plugin_contract.py checks that the two agree
 * (and that the codes are TensorRT's).
 */
#pragma once

extern "C"
{
    //! Storage types in the launchers' C ABI (msdaLauncher.h), numbered as TensorRT's DataType numbers them
    //! (kFLOAT = 0, kHALF = 1, kBF16 = 7), so the plugin passes a tensor's type through unchanged.
    enum DetrMsdaType
    {
        DETR_MSDA_FLOAT = 0,
        DETR_MSDA_HALF = 1,
        DETR_MSDA_BF16 = 7,
    };
}

namespace detr_deploy
{
namespace msda
{

constexpr char const* kPLUGIN_NAME = "MSDeformAttn";
constexpr char const* kPLUGIN_NAMESPACE = "detr_deploy";
constexpr char const* kPLUGIN_VERSION = "1";

// Inputs in order (TensorRT OSS MultiscaleDeformableAttnPlugin_TRT convention), then the one output.
constexpr int kNB_INPUTS = 5;
constexpr char const* kINPUT_NAMES[kNB_INPUTS]
    = {"value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"};
constexpr char const* kOUTPUT_NAME = "output";

// Node attributes TensorRT's ONNX parser uses to find the creator; the plugin has no other fields.
constexpr int kNB_ATTRIBUTES = 2;
constexpr char const* kATTRIBUTE_NAMES[kNB_ATTRIBUTES] = {"plugin_namespace", "plugin_version"};

// Levels are kept in shared memory by the CUDA kernel.
constexpr int kMAX_LEVELS = 16;

} // namespace msda
} // namespace detr_deploy
