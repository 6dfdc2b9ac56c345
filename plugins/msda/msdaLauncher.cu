#include "msdaKernel.cuh"
#include "msdaLauncher.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

using namespace detr_deploy::msda;

namespace
{

constexpr int kTHREADS = 256;

struct Problem
{
    void const* value;
    void const* spatialShapes;
    void const* levelStartIndex;
    void const* locations;
    void const* weights;
    void* output;
    int64_t batch;
    int64_t numValues;
    int32_t numHeads;
    int32_t headDim;
    int64_t numQueries;
    int32_t numLevels;
    int32_t numPoints;
};

bool aligned(void const* pointer, size_t bytes)
{
    return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

template <typename T, typename TL, typename TI, int V>
int launch(Problem const& p, cudaStream_t stream)
{
    int64_t const threads = p.batch * p.numQueries * p.numHeads * (p.headDim / V);
    int64_t const blocks = std::min<int64_t>((threads + kTHREADS - 1) / kTHREADS, int64_t{1} << 30);
    msdaForwardKernel<T, TL, TI, V><<<static_cast<unsigned>(blocks), kTHREADS, 0, stream>>>(
        static_cast<T const*>(p.value), static_cast<TI const*>(p.spatialShapes),
        static_cast<TI const*>(p.levelStartIndex), static_cast<TL const*>(p.locations),
        static_cast<TL const*>(p.weights), static_cast<T*>(p.output), p.batch, p.numValues, p.numHeads, p.headDim,
        p.numQueries, p.numLevels, p.numPoints);
    return static_cast<int>(cudaGetLastError());
}

//! Widest vector (16, then 8 bytes) that divides the head dimension and fits the pointers' alignment.
template <typename T, typename TL, typename TI>
int launchVectorized(Problem const& p, cudaStream_t stream)
{
    constexpr int kWIDE = 16 / static_cast<int>(sizeof(T));
    constexpr int kNARROW = 8 / static_cast<int>(sizeof(T));
    if (p.headDim % kWIDE == 0 && aligned(p.value, 16) && aligned(p.output, 16))
    {
        return launch<T, TL, TI, kWIDE>(p, stream);
    }
    if (p.headDim % kNARROW == 0 && aligned(p.value, 8) && aligned(p.output, 8))
    {
        return launch<T, TL, TI, kNARROW>(p, stream);
    }
    return launch<T, TL, TI, 1>(p, stream);
}

template <typename T, typename TL>
int dispatchIndex(Problem const& p, bool indexIsInt64, cudaStream_t stream)
{
    return indexIsInt64 ? launchVectorized<T, TL, int64_t>(p, stream) : launchVectorized<T, TL, int32_t>(p, stream);
}

template <typename T>
int dispatchLocation(Problem const& p, int valueType, int locationType, bool indexIsInt64, cudaStream_t stream)
{
    if (locationType == DETR_MSDA_FLOAT)
    {
        return dispatchIndex<T, float>(p, indexIsInt64, stream);
    }
    if (locationType == valueType)
    {
        return dispatchIndex<T, T>(p, indexIsInt64, stream);
    }
    return -1;
}

} // namespace

extern "C" int detr_msda_forward_cuda(void const* value, int valueType, void const* spatialShapes,
    void const* levelStartIndex, int indexIsInt64, void const* samplingLocations, void const* attentionWeights,
    int locationType, void* output, int64_t batch, int64_t numValues, int32_t numHeads, int32_t headDim,
    int64_t numQueries, int32_t numLevels, int32_t numPoints, cudaStream_t stream)
{
    if (!value || !spatialShapes || !levelStartIndex || !samplingLocations || !attentionWeights || !output
        || numLevels <= 0 || numLevels > kMAX_LEVELS || numHeads <= 0 || headDim <= 0 || numPoints <= 0)
    {
        return -1;
    }
    if (batch == 0 || numQueries == 0)
    {
        return 0;
    }
    Problem const p{value, spatialShapes, levelStartIndex, samplingLocations, attentionWeights, output, batch,
        numValues, numHeads, headDim, numQueries, numLevels, numPoints};
    bool const int64Index = indexIsInt64 != 0;
    switch (valueType)
    {
    case DETR_MSDA_FLOAT: return dispatchLocation<float>(p, valueType, locationType, int64Index, stream);
    case DETR_MSDA_HALF: return dispatchLocation<__half>(p, valueType, locationType, int64Index, stream);
    case DETR_MSDA_BF16: return dispatchLocation<__nv_bfloat16>(p, valueType, locationType, int64Index, stream);
    default: return -1;
    }
}
