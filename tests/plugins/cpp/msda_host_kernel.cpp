// The CUDA kernel's per-thread code (plugins/msda/msdaThread.h: level copy, index decomposition, sampling, the
// vector loads and stores of fp32, fp16 and bf16), compiled by the host compiler alone and run for every thread
// of a launch, block by block, with the launcher's own decisions (msdaLaunchPlan.h: argument checks, types, vector
// width, grid). C ABI for ctypes: tests/plugins/test_msda_host_kernel.py compares it with the PyTorch reference.
#include "msdaLaunchPlan.h"
#include "msdaThread.h"

#include <algorithm>
#include <cstdint>

using namespace detr_deploy::msda;

namespace
{

//! dispatchForward's runner on the host: the launch the CUDA launcher would make, one thread after another.
struct HostGrid
{
    int64_t blocks;          // 0: as the launcher computes them
    int32_t threadsPerBlock; // 0: the launcher's
    int32_t vectorWidth{0};  // what dispatchForward chose

    template <typename T, typename TL, typename TI, int V>
    int run(ForwardCall const& c)
    {
        ForwardArgs<T, TL> const args = typedArgs<T, TL>(c);
        int32_t const threads = threadsPerBlock > 0 ? threadsPerBlock : kTHREADS_PER_BLOCK;
        int64_t const items = workItemCount(c.batch, c.numQueries, c.numHeads, c.headDim, V);
        int64_t const grid = blocks > 0 ? blocks : blockCount(items, threads);
        for (int64_t block = 0; block < grid; ++block)
        {
            // This block's shared memory, garbage until the block's threads have copied the level table.
            int32_t shapes[2 * kMAX_LEVELS];
            int32_t starts[kMAX_LEVELS];
            std::fill(shapes, shapes + 2 * kMAX_LEVELS, -7);
            std::fill(starts, starts + kMAX_LEVELS, -7);
            for (int32_t thread = 0; thread < threads; ++thread)
            {
                copyLevels(static_cast<TI const*>(c.spatialShapes), static_cast<TI const*>(c.levelStartIndex),
                    c.numLevels, thread, threads, shapes, starts);
            }
            // __syncthreads()
            for (int32_t thread = 0; thread < threads; ++thread)
            {
                runThread<T, TL, V>(args, shapes, starts, block * threads + thread, grid * threads);
            }
        }
        vectorWidth = V;
        return 0;
    }
};

template <typename T>
void toFloats(void const* in, float* out, int64_t count)
{
    T const* const values = static_cast<T const*>(in);
    for (int64_t i = 0; i < count; ++i)
    {
        out[i] = toFloat(values[i]);
    }
}

template <typename T>
void fromFloats(float const* in, void* out, int64_t count)
{
    T* const values = static_cast<T*>(out);
    for (int64_t i = 0; i < count; ++i)
    {
        values[i] = fromFloat<T>(in[i]);
    }
}

} // namespace

extern "C"
{
    //! detr_msda_forward_cuda's arguments (no stream), then the grid (blocks, threadsPerBlock; 0 = the launcher's)
    //! and where to write the vector width the launcher's plan chose. Returns what the CUDA launcher would
    //! (0, or -1 for invalid arguments).
    int detr_msda_forward_host(void const* value, int valueType, void const* spatialShapes,
        void const* levelStartIndex, int indexIsInt64, void const* samplingLocations, void const* attentionWeights,
        int locationType, void* output, int64_t batch, int64_t numValues, int32_t numHeads, int32_t headDim,
        int64_t numQueries, int32_t numLevels, int32_t numPoints, int64_t blocks, int32_t threadsPerBlock,
        int32_t* vectorWidth)
    {
        ForwardCall const call{value, valueType, spatialShapes, levelStartIndex, indexIsInt64 != 0, samplingLocations,
            attentionWeights, locationType, output, batch, numValues, numHeads, headDim, numQueries, numLevels,
            numPoints};
        int const check = checkCall(call);
        if (check != 0)
        {
            return check < 0 ? -1 : 0;
        }
        HostGrid grid{blocks, threadsPerBlock};
        int const status = dispatchForward(call, grid);
        if (vectorWidth != nullptr)
        {
            *vectorWidth = grid.vectorWidth;
        }
        return status;
    }

    //! The storage types' conversions as the host build has them (type: a DetrMsdaType). Returns -1 for another type.
    int detr_msda_host_to_float(int type, void const* in, float* out, int64_t count)
    {
        switch (type)
        {
        case DETR_MSDA_HALF: toFloats<Half>(in, out, count); return 0;
        case DETR_MSDA_BF16: toFloats<BFloat16>(in, out, count); return 0;
        default: return -1;
        }
    }

    int detr_msda_host_from_float(int type, float const* in, void* out, int64_t count)
    {
        switch (type)
        {
        case DETR_MSDA_HALF: fromFloats<Half>(in, out, count); return 0;
        case DETR_MSDA_BF16: fromFloats<BFloat16>(in, out, count); return 0;
        default: return -1;
        }
    }
}
