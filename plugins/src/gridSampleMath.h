/*
 * Sampling math shared by the CUDA kernels and the CPU build: one definition of what a grid
 * sample means, compiled by nvcc for the device and by g++ for the CPU reference library.
 *
 * Semantics follow PyTorch's F.grid_sample on the CPU (the reference the tests compare with):
 * - a coordinate is unnormalised from [-1, 1] to pixels (centres with align_corners, edges without);
 * - border padding clamps to [0, size-1] and sends NaN to 0; reflection reflects, then clamps;
 * - bilinear/nearest apply the padding to the coordinate, bicubic to each of its 16 taps;
 * - a tap outside the input reads 0, and the bounds test happens in float before any integer
 *   conversion, so NaN, Inf and huge coordinates never produce an out-of-range read;
 * - non-finite weights propagate (a NaN grid value gives NaN with zeros padding, like PyTorch).
 */
#ifndef STN_GRID_SAMPLE_MATH_H
#define STN_GRID_SAMPLE_MATH_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define STN_HD __host__ __device__ __forceinline__
#define STN_UNROLL _Pragma("unroll")
#define STN_UNROLL_2 _Pragma("unroll 2")
#else
#define STN_HD inline
#define STN_UNROLL
#define STN_UNROLL_2
#endif

namespace stn
{

//! PyTorch's grid_sampler interpolation enum; the plugin attribute uses the same integers.
enum class Interp : int32_t
{
    kBILINEAR = 0,
    kNEAREST = 1,
    kBICUBIC = 2,
};

//! PyTorch's grid_sampler padding enum.
enum class Padding : int32_t
{
    kZEROS = 0,
    kBORDER = 1,
    kREFLECTION = 2,
};

//! Sizes and modes of one sampling call. Spatial sizes are int32; offsets are formed in int64.
struct GridSampleShape
{
    int64_t batch;
    int32_t channels;
    int32_t inH;
    int32_t inW;
    int32_t outH;
    int32_t outW;
    Padding padding;
    bool alignCorners;
};

STN_HD float toFloat(float v)
{
    return v;
}

#if defined(__CUDACC__)
STN_HD float toFloat(__half v)
{
    return __half2float(v);
}
#endif

template <typename T>
STN_HD T fromFloat(float v);

template <>
STN_HD float fromFloat<float>(float v)
{
    return v;
}

#if defined(__CUDACC__)
template <>
STN_HD __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
#endif

//! a * b rounded on its own: keeps the compiler from fusing it into an FMA, so the reflection of
//! huge coordinates rounds the same on the host and the device.
STN_HD float mulRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

//! Grid coordinate in [-1, 1] to a pixel coordinate.
STN_HD float unnormalize(float coord, int32_t size, bool alignCorners)
{
    if (alignCorners)
    {
        return (coord + 1.F) * (0.5F * static_cast<float>(size - 1));
    }
    return (coord + 1.F) * (0.5F * static_cast<float>(size)) - 0.5F;
}

//! Clamp to [0, size-1]; NaN goes to 0 (as PyTorch's CPU kernel does).
STN_HD float clipCoordinate(float x, int32_t size)
{
    float const hi = static_cast<float>(size - 1);
    if (!(x > 0.F))
    {
        return 0.F;
    }
    return x < hi ? x : hi;
}

//! Reflect about the pixel centres (align_corners) or the image edges; NaN/Inf stay non-finite.
STN_HD float reflectCoordinate(float x, int32_t size, bool alignCorners)
{
    float twiceSpan;
    float in;
    if (alignCorners)
    {
        if (size <= 1)
        {
            return 0.F;
        }
        twiceSpan = 2.F * static_cast<float>(size - 1);
        in = fabsf(x);
    }
    else
    {
        twiceSpan = 2.F * static_cast<float>(size);
        in = fabsf(x + 0.5F);
    }
    float const flips = truncf(in / twiceSpan);
    float const extra = in - mulRn(flips, twiceSpan);
    float const other = twiceSpan - extra;
    float const r = extra < other ? extra : other;
    return alignCorners ? r : r - 0.5F;
}

STN_HD float applyPadding(float x, int32_t size, Padding padding, bool alignCorners)
{
    if (padding == Padding::kBORDER)
    {
        return clipCoordinate(x, size);
    }
    if (padding == Padding::kREFLECTION)
    {
        return clipCoordinate(reflectCoordinate(x, size, alignCorners), size);
    }
    return x;
}

//! Taps along one axis: indices (0 where invalid, so a load is always in range), weights, and a
//! validity bit per tap.
template <int K>
struct AxisTaps
{
    int32_t index[K];
    float weight[K];
    uint32_t valid;
};

//! Record tap k at (already padded) coordinate c: valid only if -1 < c < size, tested in float
//! first (NaN fails), then as an integer after truncation.
template <int K>
STN_HD void setTap(AxisTaps<K>& taps, int k, float c, int32_t size, float w)
{
    taps.weight[k] = w;
    taps.index[k] = 0;
    if (c > -1.F && c < static_cast<float>(size))
    {
        int64_t const i = static_cast<int64_t>(c);
        if (i >= 0 && i < size)
        {
            taps.index[k] = static_cast<int32_t>(i);
            taps.valid |= (1U << k);
        }
    }
}

STN_HD void nearestTaps(float x, int32_t size, Padding padding, bool alignCorners, AxisTaps<1>& t)
{
    t.valid = 0U;
    float const c = rintf(applyPadding(unnormalize(x, size, alignCorners), size, padding, alignCorners));
    setTap(t, 0, c, size, 1.F);
}

STN_HD void linearTaps(float x, int32_t size, Padding padding, bool alignCorners, AxisTaps<2>& t)
{
    t.valid = 0U;
    float const c = applyPadding(unnormalize(x, size, alignCorners), size, padding, alignCorners);
    float const c0 = floorf(c);
    float const w1 = c - c0;
    setTap(t, 0, c0, size, 1.F - w1);
    setTap(t, 1, c0 + 1.F, size, w1);
}

//! Keys' cubic convolution with A = -0.75 (PyTorch's bicubic).
STN_HD float cubicNear(float x)
{
    float const a = -0.75F;
    return ((a + 2.F) * x - (a + 3.F)) * x * x + 1.F;
}

STN_HD float cubicFar(float x)
{
    float const a = -0.75F;
    return ((a * x - 5.F * a) * x + 8.F * a) * x - 4.F * a;
}

STN_HD void cubicTaps(float x, int32_t size, Padding padding, bool alignCorners, AxisTaps<4>& t)
{
    t.valid = 0U;
    float const c = unnormalize(x, size, alignCorners);
    float const c0 = floorf(c);
    float const f = c - c0;
    float const w[4] = {cubicFar(f + 1.F), cubicNear(f), cubicNear(1.F - f), cubicFar(2.F - f)};
STN_UNROLL
    for (int k = 0; k < 4; ++k)
    {
        float const tap = applyPadding(c0 - 1.F + static_cast<float>(k), size, padding, alignCorners);
        setTap(t, k, tap, size, w[k]);
    }
}

template <Interp M>
struct TapCount;
template <>
struct TapCount<Interp::kBILINEAR>
{
    static constexpr int kVALUE = 2;
};
template <>
struct TapCount<Interp::kNEAREST>
{
    static constexpr int kVALUE = 1;
};
template <>
struct TapCount<Interp::kBICUBIC>
{
    static constexpr int kVALUE = 4;
};

//! The separable taps of one output pixel: computed once, reused for every channel.
template <Interp M>
struct PixelTaps
{
    static constexpr int kK = TapCount<M>::kVALUE;
    AxisTaps<kK> x;
    AxisTaps<kK> y;
};

STN_HD void axisTaps(float g, int32_t size, Padding p, bool ac, AxisTaps<2>& t)
{
    linearTaps(g, size, p, ac, t);
}

STN_HD void axisTaps(float g, int32_t size, Padding p, bool ac, AxisTaps<1>& t)
{
    nearestTaps(g, size, p, ac, t);
}

STN_HD void axisTaps(float g, int32_t size, Padding p, bool ac, AxisTaps<4>& t)
{
    cubicTaps(g, size, p, ac, t);
}

template <Interp M>
STN_HD void pixelTaps(float gx, float gy, GridSampleShape const& s, PixelTaps<M>& taps)
{
    axisTaps(gx, s.inW, s.padding, s.alignCorners, taps.x);
    axisTaps(gy, s.inH, s.padding, s.alignCorners, taps.y);
}

//! One channel plane [H, W] read at the taps: sum_j wy_j * sum_i wx_i * v(y_j, x_i).
template <Interp M, typename T>
STN_HD float samplePlane(T const* plane, int32_t inW, PixelTaps<M> const& t)
{
    constexpr int kK = PixelTaps<M>::kK;
    float acc = 0.F;
STN_UNROLL
    for (int j = 0; j < kK; ++j)
    {
        T const* row = plane + static_cast<int64_t>(t.y.index[j]) * inW;
        bool const rowValid = (t.y.valid >> j) & 1U;
        float rowAcc = 0.F;
STN_UNROLL
        for (int i = 0; i < kK; ++i)
        {
            bool const ok = rowValid && ((t.x.valid >> i) & 1U);
            float const v = ok ? toFloat(row[t.x.index[i]]) : 0.F;
            rowAcc += t.x.weight[i] * v;
        }
        acc += t.y.weight[j] * rowAcc;
    }
    return acc;
}

//! Every channel of one output pixel: in points at image n's first plane, out at (n, 0, oy, ox).
template <Interp M, typename T>
STN_HD void sampleChannels(T const* in, T* out, float gx, float gy, GridSampleShape const& s)
{
    PixelTaps<M> taps;
    pixelTaps<M>(gx, gy, s, taps);
    int64_t const inPlane = static_cast<int64_t>(s.inH) * s.inW;
    int64_t const outPlane = static_cast<int64_t>(s.outH) * s.outW;
STN_UNROLL_2
    for (int32_t c = 0; c < s.channels; ++c)
    {
        out[c * outPlane] = fromFloat<T>(samplePlane<M, T>(in + c * inPlane, s.inW, taps));
    }
}

//! Target coordinate of output column/row i of n, in F.affine_grid's normalised convention.
STN_HD float baseCoordinate(int32_t i, int32_t n, bool alignCorners)
{
    if (n <= 1)
    {
        return 0.F;
    }
    if (alignCorners)
    {
        return static_cast<float>(2 * i - (n - 1)) / static_cast<float>(n - 1);
    }
    return static_cast<float>(2 * i + 1 - n) / static_cast<float>(n);
}

//! Source point of output (ox, oy) under theta [2, 3] (row-major).
template <typename G>
STN_HD void affinePoint(G const* theta, float xt, float yt, float& gx, float& gy)
{
    gx = toFloat(theta[0]) * xt + toFloat(theta[1]) * yt + toFloat(theta[2]);
    gy = toFloat(theta[3]) * xt + toFloat(theta[4]) * yt + toFloat(theta[5]);
}

//! Source point under a homography h [3, 3]: (x, y) / z with (x, y, z) = h (xt, yt, 1).
template <typename G>
STN_HD void projectivePoint(G const* h, float xt, float yt, float& gx, float& gy)
{
    float const x = toFloat(h[0]) * xt + toFloat(h[1]) * yt + toFloat(h[2]);
    float const y = toFloat(h[3]) * xt + toFloat(h[4]) * yt + toFloat(h[5]);
    float const z = toFloat(h[6]) * xt + toFloat(h[7]) * yt + toFloat(h[8]);
    gx = x / z;
    gy = y / z;
}

//! Transform families a kernel can sample with.
enum class Source : int32_t
{
    kGRID = 0,
    kAFFINE = 1,
    kPROJECTIVE = 2,
};

//! Number of coordinate values per image for each source: grid [Ho, Wo, 2], theta [2, 3], h [3, 3].
STN_HD int64_t sourceStride(Source src, GridSampleShape const& s)
{
    if (src == Source::kGRID)
    {
        return static_cast<int64_t>(s.outH) * s.outW * 2;
    }
    return src == Source::kAFFINE ? 6 : 9;
}

//! Normalised source point of output pixel pix (row-major in [Ho, Wo]) of image n: read from
//! the grid, or computed from theta / the homography so the fused kernels never store a grid.
template <Source S, typename G>
STN_HD void sourcePoint(G const* coords, int64_t n, int32_t pix, GridSampleShape const& s, float& gx, float& gy)
{
    G const* src = coords + n * sourceStride(S, s);
    if (S == Source::kGRID)
    {
        gx = toFloat(src[2 * static_cast<int64_t>(pix)]);
        gy = toFloat(src[2 * static_cast<int64_t>(pix) + 1]);
        return;
    }
    int32_t const oy = pix / s.outW;
    int32_t const ox = pix - oy * s.outW;
    float const xt = baseCoordinate(ox, s.outW, s.alignCorners);
    float const yt = baseCoordinate(oy, s.outH, s.alignCorners);
    if (S == Source::kAFFINE)
    {
        affinePoint(src, xt, yt, gx, gy);
    }
    else
    {
        projectivePoint(src, xt, yt, gx, gy);
    }
}

//! Sample output pixel pix (row-major in [Ho, Wo]) of image n, every channel.
template <Source S, Interp M, typename T, typename G>
STN_HD void samplePixel(T const* in, G const* coords, T* out, int64_t n, int32_t pix, GridSampleShape const& s)
{
    float gx;
    float gy;
    sourcePoint<S>(coords, n, pix, s, gx, gy);
    int64_t const inImage = static_cast<int64_t>(s.channels) * s.inH * s.inW;
    int64_t const outImage = static_cast<int64_t>(s.channels) * s.outH * s.outW;
    sampleChannels<M, T>(in + n * inImage, out + n * outImage + pix, gx, gy, s);
}

} // namespace stn

#endif // STN_GRID_SAMPLE_MATH_H
