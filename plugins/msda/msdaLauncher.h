/*
 * Launcher of the CUDA kernel: picks the vector width and the instantiation for the tensor types
 * (msdaLaunchPlan.h), and launches on the caller's stream. No allocation, no synchronization. C ABI so tests and
 * benchmarks can call it with ctypes on torch CUDA tensors; the TensorRT plugin calls it from enqueue().
 */
#pragma once

#include "msdaContract.h" // DetrMsdaType

#include <cstdint>
#include <cuda_runtime.h>

extern "C"
{
    //! value [N, S, M, D] and output [N, Lq, M, D] of valueType (a DetrMsdaType); locations [N, Lq, M, L, P, 2]
    //! and weights [N, Lq, M, L, P] of locationType (fp32, or the value type); spatial_shapes [L, 2] and
    //! level_start_index [L] int64 when indexIsInt64, else int32. Returns 0, or a cudaError_t / -1 for invalid
    //! arguments. Exported by libdetr_msda_cuda.so; the plugin library keeps it local (msdaPlugin.map).
    __attribute__((visibility("default"))) int detr_msda_forward_cuda(void const* value, int valueType,
        void const* spatialShapes, void const* levelStartIndex, int indexIsInt64, void const* samplingLocations,
        void const* attentionWeights, int locationType, void* output, int64_t batch, int64_t numValues,
        int32_t numHeads, int32_t headDim, int64_t numQueries, int32_t numLevels, int32_t numPoints,
        cudaStream_t stream);
}
