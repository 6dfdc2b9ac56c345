/*
 * The launcher's decisions, host code without CUDA: argument checks, which instantiation serves the storage and
 * index types, the vector width, the grid. msdaLauncher.cu launches the kernel with them; the host-run test
 * harness (tests/plugins/cpp) runs the kernel's per-thread code with the very same decisions.
 */
#pragma once

#include "msdaContract.h"
#include "msdaThread.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace detr_deploy
{
namespace msda
{

constexpr int32_t kTHREADS_PER_BLOCK = 256;
constexpr int64_t kMAX_BLOCKS = int64_t{1} << 30;

//! One forward call as the C ABI receives it (see detr_msda_forward_cuda in msdaLauncher.h).
struct ForwardCall
{
    void const* value;
    int valueType;
    void const* spatialShapes;
    void const* levelStartIndex;
    bool indexIsInt64;
    void const* locations;
    void const* weights;
    int locationType;
    void* output;
    int64_t batch;
    int64_t numValues;
    int32_t numHeads;
    int32_t headDim;
    int64_t numQueries;
    int32_t numLevels;
    int32_t numPoints;
};

//! -1: invalid arguments; 1: nothing to compute (no batch or no queries); 0: go on.
inline int checkCall(ForwardCall const& c)
{
    if (!c.value || !c.spatialShapes || !c.levelStartIndex || !c.locations || !c.weights || !c.output
        || c.numLevels <= 0 || c.numLevels > kMAX_LEVELS || c.numHeads <= 0 || c.headDim <= 0 || c.numPoints <= 0)
    {
        return -1;
    }
    return c.batch == 0 || c.numQueries == 0 ? 1 : 0;
}

inline bool aligned(void const* pointer, size_t bytes)
{
    return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

//! Widest vector (16, then 8 bytes) that divides the head dimension and fits the pointers' alignment, else 1.
template <typename T>
int32_t vectorWidth(ForwardCall const& c)
{
    constexpr int32_t kWIDE = 16 / static_cast<int32_t>(sizeof(T));
    constexpr int32_t kNARROW = 8 / static_cast<int32_t>(sizeof(T));
    if (c.headDim % kWIDE == 0 && aligned(c.value, 16) && aligned(c.output, 16))
    {
        return kWIDE;
    }
    if (c.headDim % kNARROW == 0 && aligned(c.value, 8) && aligned(c.output, 8))
    {
        return kNARROW;
    }
    return 1;
}

//! Blocks of `threadsPerBlock` for `items` work items; past 2^30 blocks the grid-stride loop takes the rest.
inline int64_t blockCount(int64_t items, int32_t threadsPerBlock)
{
    return std::min<int64_t>((items + threadsPerBlock - 1) / threadsPerBlock, kMAX_BLOCKS);
}

template <typename T, typename TL>
ForwardArgs<T, TL> typedArgs(ForwardCall const& c)
{
    return {static_cast<T const*>(c.value), static_cast<TL const*>(c.locations), static_cast<TL const*>(c.weights),
        static_cast<T*>(c.output), c.batch, c.numValues, c.numHeads, c.headDim, c.numQueries, c.numLevels,
        c.numPoints};
}

namespace detail
{

template <typename T, typename TL, typename TI, typename Runner>
int dispatchWidth(ForwardCall const& c, Runner& runner)
{
    constexpr int kWIDE = 16 / static_cast<int>(sizeof(T));
    constexpr int kNARROW = 8 / static_cast<int>(sizeof(T));
    switch (vectorWidth<T>(c))
    {
    case kWIDE: return runner.template run<T, TL, TI, kWIDE>(c);
    case kNARROW: return runner.template run<T, TL, TI, kNARROW>(c);
    default: return runner.template run<T, TL, TI, 1>(c);
    }
}

template <typename T, typename TL, typename Runner>
int dispatchIndex(ForwardCall const& c, Runner& runner)
{
    return c.indexIsInt64 ? dispatchWidth<T, TL, int64_t>(c, runner) : dispatchWidth<T, TL, int32_t>(c, runner);
}

template <typename T, typename Runner>
int dispatchLocation(ForwardCall const& c, Runner& runner)
{
    // Sampling inputs are fp32 or the value's type (fp32 keeps sub-pixel precision under an fp16/bf16 value).
    if (c.locationType == DETR_MSDA_FLOAT)
    {
        return dispatchIndex<T, float>(c, runner);
    }
    if (c.locationType == c.valueType)
    {
        return dispatchIndex<T, T>(c, runner);
    }
    return -1;
}

} // namespace detail

//! runner.run<T, TL, TI, V>(call) for the call's value type T, sampling type TL, index type TI and vector width
//! V; -1 for a type the kernel has no instantiation for.
template <typename Runner>
int dispatchForward(ForwardCall const& c, Runner& runner)
{
    switch (c.valueType)
    {
    case DETR_MSDA_FLOAT: return detail::dispatchLocation<float>(c, runner);
    case DETR_MSDA_HALF: return detail::dispatchLocation<Half>(c, runner);
    case DETR_MSDA_BF16: return detail::dispatchLocation<BFloat16>(c, runner);
    default: return -1;
    }
}

} // namespace msda
} // namespace detr_deploy
