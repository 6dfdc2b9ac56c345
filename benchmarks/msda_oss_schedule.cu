// The kernel schedule of TensorRT OSS's MultiscaleDeformableAttnPlugin_TRT, written anew for
// benchmarks/msda_kernel.py: what our kernel is timed against besides the PyTorch reference. Benchmark code only,
// never part of the product (the product's kernel is plugins/msda/).
//
// The schedule, as TensorRT OSS's plugin has it: one thread per output element (batch, query, head, channel), 768
// threads per block, an int32 grid-stride loop, scalar loads of `value`, sampling inputs in the value's type, and
// the arithmetic (coordinates, bilinear weights, accumulation) in that type too: fp32, or fp16 with half-precision
// intrinsics. There is no bf16 in that plugin, so there is none here.
//
//   nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -cudart static -arch=sm_90 msda_oss_schedule.cu -o lib.so
//
// C ABI: msda_oss_schedule_forward, type codes as TensorRT's DataType (0 fp32, 1 fp16); int32 level tables.
// Returns 0, or 1 (unsupported type), 2 (sizes past int32, which the schedule indexes with), 3 (launch failed).

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace
{

constexpr int32_t kTHREADS_PER_BLOCK = 768;

template <typename T>
struct Arithmetic;

template <>
struct Arithmetic<float>
{
    __device__ static float of(float x)
    {
        return x;
    }
    __device__ static float ofInt(int32_t x)
    {
        return static_cast<float>(x);
    }
    __device__ static int32_t floorToInt(float x)
    {
        return static_cast<int32_t>(floorf(x));
    }
};

template <>
struct Arithmetic<__half>
{
    __device__ static __half of(float x)
    {
        return __float2half(x);
    }
    __device__ static __half ofInt(int32_t x)
    {
        return __int2half_rd(x);
    }
    __device__ static int32_t floorToInt(__half x)
    {
        return __half2int_rd(x);
    }
};

//! Bilinear sample of channel c of head m at (y, x) in one level ([H, W, heads, channels]); zero outside.
template <typename T>
__device__ T bilinear(T const* level, int32_t height, int32_t width, int32_t heads, int32_t channels, T y, T x,
    int32_t m, int32_t c)
{
    using A = Arithmetic<T>;
    int32_t const y0 = A::floorToInt(y);
    int32_t const x0 = A::floorToInt(x);
    int32_t const y1 = y0 + 1;
    int32_t const x1 = x0 + 1;
    T const one = A::of(1.f);
    T const ly = y - A::ofInt(y0);
    T const lx = x - A::ofInt(x0);
    T const hy = one - ly;
    T const hx = one - lx;
    int32_t const columnStride = heads * channels;
    int32_t const rowStride = width * columnStride;
    int32_t const offset = m * channels + c;
    T const zero = A::of(0.f);
    T const v00 = (y0 >= 0 && x0 >= 0) ? level[y0 * rowStride + x0 * columnStride + offset] : zero;
    T const v01 = (y0 >= 0 && x1 <= width - 1) ? level[y0 * rowStride + x1 * columnStride + offset] : zero;
    T const v10 = (y1 <= height - 1 && x0 >= 0) ? level[y1 * rowStride + x0 * columnStride + offset] : zero;
    T const v11 = (y1 <= height - 1 && x1 <= width - 1) ? level[y1 * rowStride + x1 * columnStride + offset] : zero;
    return (hy * hx * v00 + hy * lx * v01) + (ly * hx * v10 + ly * lx * v11);
}

template <typename T>
__global__ void ossScheduleKernel(int32_t elements, T const* value, int32_t const* spatialShapes,
    int32_t const* levelStarts, T const* locations, T const* weights, int32_t spatialSize, int32_t heads,
    int32_t channels, int32_t levels, int32_t queries, int32_t points, T* output)
{
    using A = Arithmetic<T>;
    for (int32_t index = blockIdx.x * blockDim.x + threadIdx.x; index < elements; index += blockDim.x * gridDim.x)
    {
        int32_t rest = index;
        int32_t const c = rest % channels;
        rest /= channels;
        int32_t const sample = rest; // (batch * queries + query) * heads + head
        int32_t const m = rest % heads;
        rest /= heads;
        int32_t const b = rest / queries;
        int32_t weightIndex = sample * levels * points;
        int32_t locationIndex = weightIndex * 2;
        int32_t const tokenStride = heads * channels;
        T const half = A::of(0.5f);
        T const minusOne = A::of(-1.f);
        T accumulated = A::of(0.f);
        for (int32_t l = 0; l < levels; ++l)
        {
            int32_t const height = spatialShapes[2 * l];
            int32_t const width = spatialShapes[2 * l + 1];
            T const heightT = A::ofInt(height);
            T const widthT = A::ofInt(width);
            T const* level = value + (b * spatialSize + levelStarts[l]) * tokenStride;
            for (int32_t p = 0; p < points; ++p)
            {
                T const y = locations[locationIndex + 1] * heightT - half;
                T const x = locations[locationIndex] * widthT - half;
                if (y > minusOne && x > minusOne && y < heightT && x < widthT)
                {
                    accumulated = accumulated
                        + bilinear(level, height, width, heads, channels, y, x, m, c) * weights[weightIndex];
                }
                weightIndex += 1;
                locationIndex += 2;
            }
        }
        output[index] = accumulated;
    }
}

template <typename T>
int launch(void const* value, int32_t const* spatialShapes, int32_t const* levelStarts, void const* locations,
    void const* weights, void* output, int32_t elements, int32_t spatialSize, int32_t heads, int32_t channels,
    int32_t queries, int32_t levels, int32_t points, cudaStream_t stream)
{
    int32_t const blocks = (elements + kTHREADS_PER_BLOCK - 1) / kTHREADS_PER_BLOCK;
    ossScheduleKernel<T><<<blocks, kTHREADS_PER_BLOCK, 0, stream>>>(elements, static_cast<T const*>(value),
        spatialShapes, levelStarts, static_cast<T const*>(locations), static_cast<T const*>(weights), spatialSize,
        heads, channels, levels, queries, points, static_cast<T*>(output));
    return cudaGetLastError() == cudaSuccess ? 0 : 3;
}

} // namespace

extern "C" __attribute__((visibility("default"))) int msda_oss_schedule_forward(void const* value, int valueType,
    int32_t const* spatialShapes, int32_t const* levelStarts, void const* locations, void const* weights, void* output,
    int64_t batch, int64_t spatialSize, int32_t heads, int32_t channels, int64_t queries, int32_t levels,
    int32_t points, void* stream)
{
    int64_t const elements = batch * queries * heads * channels;
    if (elements > INT32_MAX || batch * spatialSize * heads * channels > INT32_MAX)
    {
        return 2;
    }
    if (elements == 0)
    {
        return 0;
    }
    auto const cudaStream = static_cast<cudaStream_t>(stream);
    auto const n = static_cast<int32_t>(elements);
    auto const s = static_cast<int32_t>(spatialSize);
    auto const q = static_cast<int32_t>(queries);
    switch (valueType)
    {
    case 0:
        return launch<float>(value, spatialShapes, levelStarts, locations, weights, output, n, s, heads, channels, q,
            levels, points, cudaStream);
    case 1:
        return launch<__half>(value, spatialShapes, levelStarts, locations, weights, output, n, s, heads, channels, q,
            levels, points, cudaStream);
    default: return 1;
    }
}
