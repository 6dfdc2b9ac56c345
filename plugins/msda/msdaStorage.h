/*
 * Storage types and the per-thread loads and stores of channel vectors, written once for the CUDA kernel and for
 * host-compiled tests. Under nvcc, Half and BFloat16 are CUDA's __half and __nv_bfloat16; under a plain host
 * compiler (CI has no CUDA toolkit) they are 16-bit structs of the same layout with software conversions, so the
 * same templates (which word type, how a word splits into elements, how elements become fp32) run on the host
 * over every thread index of a launch. Only the one memory instruction of a vector access differs: __ldg and a
 * vector store on the device, memcpy on the host (no aliasing assumptions in host code).
 */
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

// Only the device pass knows the unroll pragmas; the host compiler would warn about them.
#if defined(__CUDA_ARCH__)
#define MSDA_UNROLL _Pragma("unroll")
#define MSDA_NO_UNROLL _Pragma("unroll 1")
#else
#define MSDA_UNROLL
#define MSDA_NO_UNROLL
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

using Half = __half;
using BFloat16 = __nv_bfloat16;

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

//! The words of one vector access: CUDA's vector types, which __ldg and the vector store instructions take.
using Word16 = uint4;
using Word8 = uint2;

#else

//! IEEE binary16 and bfloat16 bit patterns; conversions round to nearest even, as __float2half_rn and
//! __float2bfloat16_rn do (tests/plugins check them against torch over every half and bfloat16 value).
struct Half
{
    uint16_t bits;
};
struct BFloat16
{
    uint16_t bits;
};

inline float floatFromBits(uint32_t bits)
{
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

inline uint32_t bitsOfFloat(float value)
{
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return bits;
}

template <>
inline float toFloat<Half>(Half v)
{
    uint32_t const sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
    uint32_t const exponent = (v.bits >> 10) & 0x1Fu;
    uint32_t const mantissa = v.bits & 0x3FFu;
    if (exponent == 0x1Fu)
    {
        return floatFromBits(sign | 0x7F800000u | (mantissa << 13)); // inf, or NaN with its payload
    }
    if (exponent != 0)
    {
        return floatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13)); // rebias 15 -> 127
    }
    // Zero or subnormal: mantissa * 2^-24, exact in fp32.
    float const magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign != 0 ? -magnitude : magnitude;
}

template <>
inline Half fromFloat<Half>(float v)
{
    uint32_t const bits = bitsOfFloat(v);
    uint16_t const sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    uint32_t const magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u)
    {
        return Half{static_cast<uint16_t>(sign | 0x7E00u)}; // NaN stays NaN
    }
    if (magnitude >= 0x477FF000u)
    {
        return Half{static_cast<uint16_t>(sign | 0x7C00u)}; // >= 65520 (and inf) rounds to inf
    }
    if (magnitude >= 0x38800000u)
    {
        // Normal: rebias the exponent, then round the 13 dropped mantissa bits to nearest even (a carry into the
        // exponent is the right answer).
        uint32_t const rebiased = magnitude - 0x38000000u;
        return Half{static_cast<uint16_t>(sign | ((rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13))};
    }
    // Below 2^-14: a multiple of 2^-24 (1024 of them is the smallest normal, whose bits are 0x0400).
    int32_t const exponent = static_cast<int32_t>(magnitude >> 23);
    int32_t const shift = 126 - exponent; // value / 2^-24 = significand * 2^-shift
    if (exponent == 0 || shift > 24)
    {
        return Half{sign}; // below 2^-25: rounds to zero
    }
    uint32_t const significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    uint32_t quotient = significand >> shift;
    uint32_t const remainder = significand & ((1u << shift) - 1u);
    uint32_t const halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (quotient & 1u) != 0))
    {
        ++quotient;
    }
    return Half{static_cast<uint16_t>(sign | quotient)};
}

template <>
inline float toFloat<BFloat16>(BFloat16 v)
{
    return floatFromBits(static_cast<uint32_t>(v.bits) << 16);
}

template <>
inline BFloat16 fromFloat<BFloat16>(float v)
{
    uint32_t const bits = bitsOfFloat(v);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
    {
        return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)}; // NaN stays NaN (quiet)
    }
    return BFloat16{static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16)};
}

//! Host stand-ins of uint4 and uint2: same size and alignment.
struct alignas(16) Word16
{
    uint32_t x, y, z, w;
};
struct alignas(8) Word8
{
    uint32_t x, y;
};

#endif

//! The word of a V-channel access of type T: 16, 8 or 4 bytes; void when V channels span another size (they are
//! then read and written one by one).
template <int kBYTES>
struct WordOf
{
    using Type = void;
};
template <>
struct WordOf<16>
{
    using Type = Word16;
};
template <>
struct WordOf<8>
{
    using Type = Word8;
};
template <>
struct WordOf<4>
{
    using Type = uint32_t;
};

template <typename Word>
MSDA_HOST_DEVICE Word loadWord(void const* address)
{
#if defined(__CUDA_ARCH__)
    // Read-only data cache; the launcher checked the alignment.
    return __ldg(static_cast<Word const*>(address));
#else
    Word word;
    std::memcpy(&word, address, sizeof(Word));
    return word;
#endif
}

template <typename Word>
MSDA_HOST_DEVICE void storeWord(void* address, Word const& word)
{
#if defined(__CUDA_ARCH__)
    *static_cast<Word*>(address) = word;
#else
    std::memcpy(address, &word, sizeof(Word));
#endif
}

//! out[c] = channel c of source[0, V) as fp32: one load when V channels span 16, 8 or 4 bytes, else one by one.
template <typename T, int V>
MSDA_HOST_DEVICE void loadChannels(T const* source, float (&out)[V])
{
    using Word = typename WordOf<V * static_cast<int>(sizeof(T))>::Type;
    if constexpr (!std::is_void<Word>::value)
    {
        Word const word = loadWord<Word>(source);
        T elements[V];
        std::memcpy(elements, &word, sizeof(Word));
        MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            out[c] = toFloat(elements[c]);
        }
    }
    else
    {
        MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            out[c] = toFloat(source[c]);
        }
    }
}

//! target[0, V) = acc rounded to T: one store when V channels span 16, 8 or 4 bytes, else one by one.
template <typename T, int V>
MSDA_HOST_DEVICE void storeChannels(T* target, float const (&acc)[V])
{
    using Word = typename WordOf<V * static_cast<int>(sizeof(T))>::Type;
    T elements[V];
    MSDA_UNROLL
    for (int c = 0; c < V; ++c)
    {
        elements[c] = fromFloat<T>(acc[c]);
    }
    if constexpr (!std::is_void<Word>::value)
    {
        Word word;
        std::memcpy(&word, elements, sizeof(Word));
        storeWord(target, word);
    }
    else
    {
        MSDA_UNROLL
        for (int c = 0; c < V; ++c)
        {
            target[c] = elements[c];
        }
    }
}

} // namespace msda
} // namespace detr_deploy
