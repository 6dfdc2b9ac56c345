/*
 * CUDA kernel of multi-scale deformable attention. One thread owns V consecutive channels of one
 * (batch, query, head); the threads of one query's heads are adjacent, so a warp reads the same sampling
 * locations and weights (broadcast loads) and its value loads are V-wide vectors along the channel axis.
 * The kernel only places the level table in shared memory and hands each thread its indices: what a thread does
 * is msdaThread.h, which the host-run tests execute too.
 */
#pragma once

#include "msdaContract.h"
#include "msdaThread.h"

#include <cstdint>
#include <cuda_runtime.h>

namespace detr_deploy
{
namespace msda
{

//! T: value/output storage; TL: locations and weights storage; TI: index type of spatial_shapes/level_start.
//! The pointers are kernel parameters (not a struct) so that __restrict__ reaches the compiler.
template <typename T, typename TL, typename TI, int V>
__global__ void msdaForwardKernel(T const* __restrict__ value, TI const* __restrict__ spatialShapes,
    TI const* __restrict__ levelStartIndex, TL const* __restrict__ locations, TL const* __restrict__ weights,
    T* __restrict__ output, int64_t batch, int64_t numValues, int32_t numHeads, int32_t headDim, int64_t numQueries,
    int32_t numLevels, int32_t numPoints)
{
    __shared__ int32_t shapes[2 * kMAX_LEVELS];
    __shared__ int32_t starts[kMAX_LEVELS];
    copyLevels(spatialShapes, levelStartIndex, numLevels, static_cast<int32_t>(threadIdx.x),
        static_cast<int32_t>(blockDim.x), shapes, starts);
    __syncthreads();

    ForwardArgs<T, TL> const args{
        value, locations, weights, output, batch, numValues, numHeads, headDim, numQueries, numLevels, numPoints};
    runThread<T, TL, V>(args, shapes, starts, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
        static_cast<int64_t>(gridDim.x) * blockDim.x);
}

} // namespace msda
} // namespace detr_deploy
