/*
 * Channels-last sampling for TensorRT's kHWC8 format, on top of gridSampleMath.h: the same taps
 * and weights as the NCHW path, applied to groups of 8 contiguous channels (one 16-byte load per
 * tap in fp16). Shared by the CUDA kernels and the CPU build like the rest of the math.
 */
#ifndef STN_GRID_SAMPLE_HWC8_H
#define STN_GRID_SAMPLE_HWC8_H

#include "gridSampleMath.h"

namespace stn
{

// Element (n, c, h, w) of an [N, C, H, W] tensor lives at ((n*H + h)*W + w)*Cp + c with
// Cp = round_up(C, 8). One call samples one output pixel for one group of 8 channels: the taps
// are the same as in NCHW, each tap reads 8 contiguous channels (one 16-byte load in fp16).

constexpr int32_t kHWC_GROUP = 8;

STN_HD int64_t paddedChannels(int32_t channels)
{
    return (static_cast<int64_t>(channels) + kHWC_GROUP - 1) / kHWC_GROUP * kHWC_GROUP;
}

//! The 8 channels of one tap as loaded: 8 floats (the CPU build and fp32 tests) or one 16-byte
//! vector of 8 halves. Value-initialised, it is the 0 an invalid tap reads.
template <typename T>
struct Group8;

template <>
struct Group8<float>
{
    float v[kHWC_GROUP];
};

STN_HD Group8<float> load8(float const* src)
{
    Group8<float> g;
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP; ++k)
    {
        g.v[k] = src[k];
    }
    return g;
}

//! acc[k] += w * channel k: the same expression the NCHW path uses per channel.
STN_HD void accumulate8(Group8<float> const& g, float w, float* acc)
{
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP; ++k)
    {
        acc[k] += w * g.v[k];
    }
}

STN_HD void store8(float* dst, float const* acc, int32_t valid)
{
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP; ++k)
    {
        dst[k] = k < valid ? acc[k] : 0.F;
    }
}

#if defined(__CUDACC__)
template <>
struct Group8<__half>
{
    uint4 raw;
};

__device__ __forceinline__ Group8<__half> load8(__half const* src)
{
    return Group8<__half>{*reinterpret_cast<uint4 const*>(src)};
}

//! fp16 storage: 8 halves converted pairwise to fp32.
__device__ __forceinline__ void accumulate8(Group8<__half> const& g, float w, float* acc)
{
    __half2 const* h = reinterpret_cast<__half2 const*>(&g.raw);
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP / 2; ++k)
    {
        float2 const f = __half22float2(h[k]);
        acc[2 * k] += w * f.x;
        acc[2 * k + 1] += w * f.y;
    }
}

__device__ __forceinline__ void store8(__half* dst, float const* acc, int32_t valid)
{
    uint4 raw;
    __half2* h = reinterpret_cast<__half2*>(&raw);
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP / 2; ++k)
    {
        float const a = 2 * k < valid ? acc[2 * k] : 0.F;
        float const b = 2 * k + 1 < valid ? acc[2 * k + 1] : 0.F;
        h[k] = __floats2half2_rn(a, b);
    }
    *reinterpret_cast<uint4*>(dst) = raw;
}
#endif

//! One 8-channel group of one output pixel. image: image n's first element; out: the group's
//! first element in the output. Channels >= valid (the padding) are written as 0.
//!
//! Every tap of a row block is loaded before any is used, so the loads are in flight together
//! (all taps for nearest and bilinear, one row of 4 at a time for bicubic, to bound registers).
//! Loading inside the accumulation instead left one 16-byte load in flight per thread: the
//! H200 run of 2026-11-30 measured that version at 33% of a device-to-device copy.
template <Interp M, typename T>
STN_HD void sampleGroupHWC(T const* image, T* out, int32_t inW, int64_t cp, PixelTaps<M> const& t, int32_t valid)
{
    constexpr int kK = PixelTaps<M>::kK;
    constexpr int kRows = kK <= 2 ? kK : 1;
    float acc[kHWC_GROUP];
    STN_UNROLL
    for (int k = 0; k < kHWC_GROUP; ++k)
    {
        acc[k] = 0.F;
    }
    STN_UNROLL
    for (int j0 = 0; j0 < kK; j0 += kRows)
    {
        Group8<T> taps[kRows][kK];
        STN_UNROLL
        for (int r = 0; r < kRows; ++r)
        {
            bool const rowValid = (t.y.valid >> (j0 + r)) & 1U;
            int64_t const rowStart = static_cast<int64_t>(t.y.index[j0 + r]) * inW;
            STN_UNROLL
            for (int i = 0; i < kK; ++i)
            {
                bool const ok = rowValid && ((t.x.valid >> i) & 1U);
                // An invalid tap reads 0; w * 0 keeps PyTorch's NaN propagation for NaN weights.
                taps[r][i] = ok ? load8(image + (rowStart + t.x.index[i]) * cp) : Group8<T>{};
            }
        }
        STN_UNROLL
        for (int r = 0; r < kRows; ++r)
        {
            float row[kHWC_GROUP];
            STN_UNROLL
            for (int k = 0; k < kHWC_GROUP; ++k)
            {
                row[k] = 0.F;
            }
            STN_UNROLL
            for (int i = 0; i < kK; ++i)
            {
                accumulate8(taps[r][i], t.x.weight[i], row);
            }
            STN_UNROLL
            for (int k = 0; k < kHWC_GROUP; ++k)
            {
                acc[k] += t.y.weight[j0 + r] * row[k];
            }
        }
    }
    store8(out, acc, valid);
}

//! Sample output pixel pix of image n for channel group g, channels-last layout.
template <Source S, Interp M, typename T, typename G>
STN_HD void samplePixelGroupHWC(
    T const* in, G const* coords, T* out, int64_t n, int32_t pix, int32_t g, GridSampleShape const& s)
{
    float gx;
    float gy;
    sourcePoint<S>(coords, n, pix, s, gx, gy);
    PixelTaps<M> taps;
    pixelTaps<M>(gx, gy, s, taps);
    int64_t const cp = paddedChannels(s.channels);
    int64_t const first = static_cast<int64_t>(g) * kHWC_GROUP;
    T const* image = in + n * static_cast<int64_t>(s.inH) * s.inW * cp + first;
    T* dst = out + (n * static_cast<int64_t>(s.outH) * s.outW + pix) * cp + first;
    int32_t const left = s.channels - static_cast<int32_t>(first);
    sampleGroupHWC<M, T>(image, dst, s.inW, cp, taps, left < kHWC_GROUP ? left : kHWC_GROUP);
}

} // namespace stn

#endif // STN_GRID_SAMPLE_HWC8_H
