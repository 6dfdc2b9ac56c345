/*
 * CPU entry point of the MSDA core, built with the host compiler alone (no CUDA), so the kernel's math can be
 * tested where no GPU is. C ABI for ctypes. Shapes as in msdaSampling.h; all tensors contiguous.
 */
#pragma once

#include <cstdint>

extern "C"
{
    //! Returns 0 on success, non-zero for invalid arguments (null pointers, non-positive sizes, too many levels).
    int detr_msda_forward_cpu_f32(float const* value, int64_t const* spatialShapes, int64_t const* levelStartIndex,
        float const* samplingLocations, float const* attentionWeights, int64_t batch, int64_t numValues,
        int32_t numHeads, int32_t headDim, int64_t numQueries, int32_t numLevels, int32_t numPoints, float* output);
}
