#include "msdaKernel.cuh"
#include "msdaLaunchPlan.h"
#include "msdaLauncher.h"

using namespace detr_deploy::msda;

namespace
{

//! dispatchForward's runner on the GPU: one launch on the caller's stream, no allocation, no synchronization.
struct CudaLaunch
{
    cudaStream_t stream;

    template <typename T, typename TL, typename TI, int V>
    int run(ForwardCall const& c)
    {
        int64_t const items = workItemCount(c.batch, c.numQueries, c.numHeads, c.headDim, V);
        int64_t const blocks = blockCount(items, kTHREADS_PER_BLOCK);
        ForwardArgs<T, TL> const a = typedArgs<T, TL>(c);
        msdaForwardKernel<T, TL, TI, V><<<static_cast<unsigned>(blocks), kTHREADS_PER_BLOCK, 0, stream>>>(a.value,
            static_cast<TI const*>(c.spatialShapes), static_cast<TI const*>(c.levelStartIndex), a.locations,
            a.weights, a.output, a.batch, a.numValues, a.numHeads, a.headDim, a.numQueries, a.numLevels,
            a.numPoints);
        return static_cast<int>(cudaGetLastError());
    }
};

} // namespace

extern "C" int detr_msda_forward_cuda(void const* value, int valueType, void const* spatialShapes,
    void const* levelStartIndex, int indexIsInt64, void const* samplingLocations, void const* attentionWeights,
    int locationType, void* output, int64_t batch, int64_t numValues, int32_t numHeads, int32_t headDim,
    int64_t numQueries, int32_t numLevels, int32_t numPoints, cudaStream_t stream)
{
    ForwardCall const call{value, valueType, spatialShapes, levelStartIndex, indexIsInt64 != 0, samplingLocations,
        attentionWeights, locationType, output, batch, numValues, numHeads, headDim, numQueries, numLevels,
        numPoints};
    int const check = checkCall(call);
    if (check != 0)
    {
        return check < 0 ? -1 : 0;
    }
    CudaLaunch launch{stream};
    return dispatchForward(call, launch);
}
