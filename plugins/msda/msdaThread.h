/*
 * What one CUDA thread of the MSDA kernel does, as __host__ __device__ functions of the thread's index: copying the
 * level table, splitting a work-item index into (batch, query, head, channel group), sampling (msdaSampling.h)
 * and the vector loads and stores (msdaStorage.h). msdaKernel.cuh calls exactly these; tests/plugins/cpp runs the
 * same functions on the host for every thread index of a launch, so these code paths are tested where no GPU is.
 */
#pragma once

#include "msdaContract.h"
#include "msdaSampling.h"

#include <cstdint>

namespace detr_deploy
{
namespace msda
{

//! The tensors and sizes of one forward call, typed. value [N, S, M, D], locations [N, Lq, M, L, P, 2],
//! weights [N, Lq, M, L, P], output [N, Lq, M, D].
template <typename T, typename TL>
struct ForwardArgs
{
    T const* value;
    TL const* locations;
    TL const* weights;
    T* output;
    int64_t batch;
    int64_t numValues;
    int32_t numHeads;
    int32_t headDim;
    int64_t numQueries;
    int32_t numLevels;
    int32_t numPoints;
};

//! Work items of a launch: one per V consecutive channels of each (batch, query, head).
MSDA_HOST_DEVICE int64_t workItemCount(
    int64_t batch, int64_t numQueries, int32_t numHeads, int32_t headDim, int32_t vectorWidth)
{
    return batch * numQueries * numHeads * (headDim / vectorWidth);
}

struct WorkItem
{
    int64_t batch;
    int64_t query;
    int32_t head;
    int32_t channel0;
};

//! Work-item index -> (n, q, m, first channel). Channel groups vary fastest, then heads: the threads of one
//! query's heads are adjacent, so a warp shares that query's sampling inputs (broadcast loads).
MSDA_HOST_DEVICE WorkItem decomposeIndex(
    int64_t index, int32_t vectorWidth, int32_t headDim, int32_t numHeads, int64_t numQueries)
{
    int32_t const groups = headDim / vectorWidth;
    WorkItem item;
    item.channel0 = static_cast<int32_t>(index % groups) * vectorWidth;
    int64_t rest = index / groups;
    item.head = static_cast<int32_t>(rest % numHeads);
    rest /= numHeads;
    item.query = rest % numQueries;
    item.batch = rest / numQueries;
    return item;
}

//! The level table as int32 (it sits in shared memory on the GPU). The threads of a block share the copy: thread
//! t of `stride` copies levels t, t + stride, ...; the caller synchronizes before reading.
template <typename TI>
MSDA_HOST_DEVICE void copyLevels(TI const* spatialShapes, TI const* levelStartIndex, int32_t numLevels, int32_t thread,
    int32_t stride, int32_t* shapes, int32_t* starts)
{
    // Once per block and at most 16 levels: not worth the registers an unrolled copy takes.
    MSDA_NO_UNROLL
    for (int32_t level = thread; level < numLevels; level += stride)
    {
        shapes[2 * level] = static_cast<int32_t>(spatialShapes[2 * level]);
        shapes[2 * level + 1] = static_cast<int32_t>(spatialShapes[2 * level + 1]);
        starts[level] = static_cast<int32_t>(levelStartIndex[level]);
    }
}

//! One work item: its V output channels, accumulated in fp32 and stored as T.
template <typename T, typename TL, int V>
MSDA_HOST_DEVICE void computeWorkItem(
    ForwardArgs<T, TL> const& args, int32_t const* shapes, int32_t const* starts, int64_t index)
{
    WorkItem const item = decomposeIndex(index, V, args.headDim, args.numHeads, args.numQueries);
    float acc[V];
    attendOneQuery<T, TL, V>(args.value, shapes, starts, args.locations, args.weights, item.batch, item.query,
        item.head, item.channel0, args.numValues, args.numQueries, args.numHeads, args.headDim, args.numLevels,
        args.numPoints, acc);
    int64_t const row = (item.batch * args.numQueries + item.query) * args.numHeads + item.head;
    storeChannels<T, V>(args.output + row * args.headDim + item.channel0, acc);
}

//! A thread's share of the work after the level copy: items first, first + stride, ... (grid-stride loop; on the
//! GPU first = blockIdx.x * blockDim.x + threadIdx.x and stride = gridDim.x * blockDim.x).
template <typename T, typename TL, int V>
MSDA_HOST_DEVICE void runThread(
    ForwardArgs<T, TL> const& args, int32_t const* shapes, int32_t const* starts, int64_t first, int64_t stride)
{
    int64_t const total = workItemCount(args.batch, args.numQueries, args.numHeads, args.headDim, V);
    for (int64_t index = first; index < total; index += stride)
    {
        computeWorkItem<T, TL, V>(args, shapes, starts, index);
    }
}

} // namespace msda
} // namespace detr_deploy
