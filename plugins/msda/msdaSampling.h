/*
 * The sample-and-accumulate core of multi-scale deformable attention, written once for the CUDA kernel and
 * the host-compiled CPU reference. It reproduces grid_sample(mode=bilinear, padding_mode=zeros,
 * align_corners=False): a location (x, y) in [0, 1] maps to pixel (x * W - 0.5, y * H - 0.5) and every tap
 * outside the map contributes zero. Coordinates and accumulation are fp32 whatever the storage type. Channel
 * loads are msdaStorage.h's (one vector load when the V channels of a thread span 16, 8 or 4 bytes).
 */
#pragma once

#include "msdaStorage.h"

#include <cmath>
#include <cstdint>

namespace detr_deploy
{
namespace msda
{

//! The four bilinear taps of one sampling location on one level: pixel offsets (row * W + col) and weights.
//! A tap outside the map has weight 0 and offset 0, so it can be loaded and added without a branch.
struct BilinearTaps
{
    int32_t offset[4];
    float weight[4];
};

MSDA_HOST_DEVICE BilinearTaps bilinearTaps(float x, float y, int32_t height, int32_t width)
{
    BilinearTaps taps{};
    float const px = x * static_cast<float>(width) - 0.5f;
    float const py = y * static_cast<float>(height) - 0.5f;
    // Outside (or NaN): every tap is off the map. The comparisons are false for NaN.
    if (!(px > -1.f && py > -1.f && px < static_cast<float>(width) && py < static_cast<float>(height)))
    {
        return taps;
    }
    float const fx = floorf(px);
    float const fy = floorf(py);
    int32_t const x0 = static_cast<int32_t>(fx);
    int32_t const y0 = static_cast<int32_t>(fy);
    float const lx = px - fx;
    float const ly = py - fy;
    float const hx = 1.f - lx;
    float const hy = 1.f - ly;
    int32_t const xs[2] = {x0, x0 + 1};
    int32_t const ys[2] = {y0, y0 + 1};
    float const wx[2] = {hx, lx};
    float const wy[2] = {hy, ly};
MSDA_UNROLL
    for (int corner = 0; corner < 4; ++corner)
    {
        int32_t const col = xs[corner & 1];
        int32_t const row = ys[corner >> 1];
        bool const inside = col >= 0 && row >= 0 && col < width && row < height;
        taps.offset[corner] = inside ? row * width + col : 0;
        taps.weight[corner] = inside ? wy[corner >> 1] * wx[corner & 1] : 0.f;
    }
    return taps;
}

//! acc[c] += attention * bilinear sample of channels [0, V) at (x, y) of one level of one head.
//! levelValue points at value[n, levelStart, m, channel0]; consecutive pixels are pixelStride elements apart.
template <typename T, int V>
MSDA_HOST_DEVICE void sampleAndAccumulate(T const* levelValue, int64_t pixelStride, int32_t height, int32_t width,
    float x, float y, float attention, float (&acc)[V])
{
    BilinearTaps const taps = bilinearTaps(x, y, height, width);
MSDA_UNROLL
    for (int corner = 0; corner < 4; ++corner)
    {
        float const weight = taps.weight[corner] * attention;
        if (weight != 0.f)
        {
            float channels[V];
            loadChannels<T, V>(levelValue + static_cast<int64_t>(taps.offset[corner]) * pixelStride, channels);
MSDA_UNROLL
            for (int c = 0; c < V; ++c)
            {
                acc[c] += weight * channels[c];
            }
        }
    }
}

//! The whole op for one (batch, query, head) and channels [channel0, channel0 + V): the loop both the CPU
//! reference and each CUDA thread run. Shapes: value [N, S, M, D], locations [N, Lq, M, L, P, 2],
//! weights [N, Lq, M, L, P]; spatialShapes [L, 2] and levelStart [L] are already in registers/host memory.
template <typename T, typename TL, int V>
MSDA_HOST_DEVICE void attendOneQuery(T const* value, int32_t const* spatialShapes, int32_t const* levelStart,
    TL const* locations, TL const* weights, int64_t batch, int64_t query, int64_t head, int32_t channel0,
    int64_t numValues, int64_t numQueries, int32_t numHeads, int32_t headDim, int32_t numLevels,
    int32_t numPoints, float (&acc)[V])
{
MSDA_UNROLL
    for (int c = 0; c < V; ++c)
    {
        acc[c] = 0.f;
    }
    int64_t const pixelStride = static_cast<int64_t>(numHeads) * headDim;
    int64_t const sample0 = ((batch * numQueries + query) * numHeads + head) * numLevels * numPoints;
    T const* const headValue = value + batch * numValues * pixelStride + head * headDim + channel0;
    for (int32_t level = 0; level < numLevels; ++level)
    {
        T const* const levelValue = headValue + static_cast<int64_t>(levelStart[level]) * pixelStride;
        int32_t const height = spatialShapes[2 * level];
        int32_t const width = spatialShapes[2 * level + 1];
        for (int32_t point = 0; point < numPoints; ++point)
        {
            int64_t const sample = sample0 + level * numPoints + point;
            sampleAndAccumulate<T, V>(levelValue, pixelStride, height, width,
                toFloat(locations[2 * sample]), toFloat(locations[2 * sample + 1]), toFloat(weights[sample]), acc);
        }
    }
}

} // namespace msda
} // namespace detr_deploy
