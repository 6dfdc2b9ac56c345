/*
 * CUDA kernel of multi-scale deformable attention. One thread owns V consecutive channels of one
 * (batch, query, head); the threads of one query's heads are adjacent, so a warp reads the same sampling
 * locations and weights (broadcast loads) and its value loads are V-wide vectors along the channel axis.
 * The sampling math is the shared core in msdaSampling.h.
 */
#pragma once

#include "msdaContract.h"
#include "msdaSampling.h"

#include <cstdint>
#include <cuda_runtime.h>
#include <type_traits>

namespace detr_deploy
{
namespace msda
{

//! V channels in one load when they span 16, 8 or 4 bytes (the launcher checks alignment), else one by one.
template <typename T, int V>
struct VectorLoader
{
    MSDA_HOST_DEVICE static void load(T const* source, float (&out)[V])
    {
#if defined(__CUDA_ARCH__)
        constexpr int kBYTES = V * static_cast<int>(sizeof(T));
        if constexpr (kBYTES == 16 || kBYTES == 8 || kBYTES == 4)
        {
            using Word = typename std::conditional<kBYTES == 16, uint4,
                typename std::conditional<kBYTES == 8, uint2, uint32_t>::type>::type;
            Word const raw = __ldg(reinterpret_cast<Word const*>(source));
            T const* elements = reinterpret_cast<T const*>(&raw);
            MSDA_UNROLL
            for (int c = 0; c < V; ++c)
            {
                out[c] = toFloat(elements[c]);
            }
            return;
        }
#endif
        ChannelLoader<T, V>::load(source, out);
    }
};

template <typename T, int V>
__device__ __forceinline__ void storeChannels(T* target, float const (&acc)[V])
{
    constexpr int kBYTES = V * static_cast<int>(sizeof(T));
    if constexpr (kBYTES == 16 || kBYTES == 8 || kBYTES == 4)
    {
        using Word = typename std::conditional<kBYTES == 16, uint4,
            typename std::conditional<kBYTES == 8, uint2, uint32_t>::type>::type;
        Word raw;
        T* elements = reinterpret_cast<T*>(&raw);
        MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            elements[c] = fromFloat<T>(acc[c]);
        }
        *reinterpret_cast<Word*>(target) = raw;
    }
    else
    {
        MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            target[c] = fromFloat<T>(acc[c]);
        }
    }
}

//! T: value/output storage; TL: locations and weights storage; TI: index type of spatial_shapes/level_start.
template <typename T, typename TL, typename TI, int V>
__global__ void msdaForwardKernel(T const* __restrict__ value, TI const* __restrict__ spatialShapes,
    TI const* __restrict__ levelStartIndex, TL const* __restrict__ locations, TL const* __restrict__ weights,
    T* __restrict__ output, int64_t batch, int64_t numValues, int32_t numHeads, int32_t headDim, int64_t numQueries,
    int32_t numLevels, int32_t numPoints)
{
    __shared__ int32_t shapes[2 * kMAX_LEVELS];
    __shared__ int32_t starts[kMAX_LEVELS];
    for (int32_t level = threadIdx.x; level < numLevels; level += blockDim.x)
    {
        shapes[2 * level] = static_cast<int32_t>(spatialShapes[2 * level]);
        shapes[2 * level + 1] = static_cast<int32_t>(spatialShapes[2 * level + 1]);
        starts[level] = static_cast<int32_t>(levelStartIndex[level]);
    }
    __syncthreads();

    int32_t const groups = headDim / V;
    int64_t const total = batch * numQueries * numHeads * groups;
    for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
         index += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int32_t const group = static_cast<int32_t>(index % groups);
        int64_t rest = index / groups;
        int32_t const head = static_cast<int32_t>(rest % numHeads);
        rest /= numHeads;
        int64_t const query = rest % numQueries;
        int64_t const n = rest / numQueries;
        float acc[V];
        attendOneQuery<T, TL, V, VectorLoader<T, V>>(value, shapes, starts, locations, weights, n, query, head,
            group * V, numValues, numQueries, numHeads, headDim, numLevels, numPoints, acc);
        storeChannels<T, V>(output + ((n * numQueries + query) * numHeads + head) * headDim + group * V, acc);
    }
}

} // namespace msda
} // namespace detr_deploy
