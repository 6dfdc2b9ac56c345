/*
 * The sample-and-accumulate core of multi-scale deformable attention, written once for the CUDA kernel and
 * the host-compiled CPU reference. It reproduces grid_sample(mode=bilinear, padding_mode=zeros,
 * align_corners=False): a location (x, y) in [0, 1] maps to pixel (x * W - 0.5, y * H - 0.5) and every tap
 * outside the map contributes zero. Coordinates and accumulation are fp32 whatever the storage type.
 */
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

// Only the device pass knows the unroll pragma; the host compiler would warn about it.
#if defined(__CUDA_ARCH__)
#define MSDA_UNROLL _Pragma("unroll")
#else
#define MSDA_UNROLL
#endif

namespace detr_deploy
{
namespace msda
{

template <typename T>
MSDA_HOST_DEVICE float toFloat(T v)
{
    return static_cast<float>(v);
}

template <typename T>
MSDA_HOST_DEVICE T fromFloat(float v)
{
    return static_cast<T>(v);
}

#if defined(__CUDACC__)
template <>
MSDA_HOST_DEVICE float toFloat<__half>(__half v)
{
    return __half2float(v);
}
template <>
MSDA_HOST_DEVICE __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
MSDA_HOST_DEVICE float toFloat<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
template <>
MSDA_HOST_DEVICE __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}
#endif

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

//! Load V consecutive channels as fp32. The CUDA build replaces this with vectorized loads (msdaKernel.cuh).
template <typename T, int V>
struct ChannelLoader
{
    MSDA_HOST_DEVICE static void load(T const* source, float (&out)[V])
    {
MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            out[c] = toFloat(source[c]);
        }
    }
};

//! acc[c] += attention * bilinear sample of channels [0, V) at (x, y) of one level of one head.
//! levelValue points at value[n, levelStart, m, channel0]; consecutive pixels are pixelStride elements apart.
template <typename T, int V, typename Loader = ChannelLoader<T, V>>
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
            Loader::load(levelValue + static_cast<int64_t>(taps.offset[corner]) * pixelStride, channels);
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
template <typename T, typename TL, int V, typename Loader = ChannelLoader<T, V>>
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
            sampleAndAccumulate<T, V, Loader>(levelValue, pixelStride, height, width,
                toFloat(locations[2 * sample]), toFloat(locations[2 * sample + 1]), toFloat(weights[sample]), acc);
        }
    }
}

} // namespace msda
} // namespace detr_deploy
