#include "msdaCpu.h"

#include "msdaContract.h"
#include "msdaSampling.h"

using namespace detr_deploy::msda;

extern "C" int detr_msda_forward_cpu_f32(float const* value, int64_t const* spatialShapes,
    int64_t const* levelStartIndex, float const* samplingLocations, float const* attentionWeights, int64_t batch,
    int64_t numValues, int32_t numHeads, int32_t headDim, int64_t numQueries, int32_t numLevels, int32_t numPoints,
    float* output)
{
    if (!value || !spatialShapes || !levelStartIndex || !samplingLocations || !attentionWeights || !output)
    {
        return 1;
    }
    if (batch <= 0 || numValues <= 0 || numHeads <= 0 || headDim <= 0 || numQueries <= 0 || numLevels <= 0
        || numLevels > kMAX_LEVELS || numPoints <= 0)
    {
        return 2;
    }
    int32_t shapes[2 * kMAX_LEVELS];
    int32_t starts[kMAX_LEVELS];
    for (int32_t level = 0; level < numLevels; ++level)
    {
        shapes[2 * level] = static_cast<int32_t>(spatialShapes[2 * level]);
        shapes[2 * level + 1] = static_cast<int32_t>(spatialShapes[2 * level + 1]);
        starts[level] = static_cast<int32_t>(levelStartIndex[level]);
    }
    constexpr int V = 1;
    for (int64_t n = 0; n < batch; ++n)
    {
        for (int64_t q = 0; q < numQueries; ++q)
        {
            for (int32_t m = 0; m < numHeads; ++m)
            {
                float* const out = output + ((n * numQueries + q) * numHeads + m) * headDim;
                for (int32_t c = 0; c < headDim; c += V)
                {
                    float acc[V];
                    attendOneQuery<float, float, V>(value, shapes, starts, samplingLocations, attentionWeights, n, q,
                        m, c, numValues, numQueries, numHeads, headDim, numLevels, numPoints, acc);
                    out[c] = acc[0];
                }
            }
        }
    }
    return 0;
}
