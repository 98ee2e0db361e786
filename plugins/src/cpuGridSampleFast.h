/*
 * Production CPU kernels: the same sampling math as the reference loop (gridSampleMath.h, whose
 * __host__ __device__ functions are called here), arranged for a CPU. Work is split over
 * N x output rows on a thread pool; each row is processed in chunks of kCHUNK pixels, in loops
 * over contiguous arrays that the compiler vectorises (16 pixels per instruction with AVX-512):
 *   1. one loop computes each pixel's source point (read from the grid, or computed from theta
 *      / the homography: the fused paths never materialise a grid), its taps per axis from the
 *      shared unnormalize / padding / weight functions, and the taps' plane offsets;
 *   2. one loop per channel reads the taps (one gather each) and accumulates them in exactly
 *      samplePlane's order, so results are bit-identical to the reference
 *      (tests/plugins/test_cpu_parity.py checks it). Bilinear is the fast path: four gathers
 *      and six multiply-adds per output value, taps computed once for all channels.
 * Validity: the reference (setTap) accepts a tap when -1 < c < size and then 0 <= trunc(c) <
 * size; for any c in (-1, size) trunc(c) is in [0, size - 1], so the float test alone decides,
 * which is what lets it vectorise. Invalid taps read index 0 and are replaced by 0 after the
 * load, as in samplePlane (a NaN weight still makes NaN).
 */
#ifndef STN_CPU_GRID_SAMPLE_FAST_H
#define STN_CPU_GRID_SAMPLE_FAST_H

#include "cpuThreadPool.h"
#include "gridSampleMath.h"

namespace stn
{
namespace cpu
{

//! Output pixels per chunk: the tap tables of a chunk stay in L1 while every channel reuses them.
constexpr int32_t kCHUNK = 128;

//! One sampling call: what every row task needs.
struct Job
{
    float const* in;
    float const* coords;
    float* out;
    GridSampleShape s;
};

//! The taps of a chunk of pixels, structure of arrays: each axis's tap coordinates (padded,
//! before the validity test) and weights, then K x K plane offsets and validity masks.
template <int K>
struct ChunkTaps
{
    float cx[K][kCHUNK];
    float cy[K][kCHUNK];
    float wx[K][kCHUNK];
    float wy[K][kCHUNK];
    int32_t offset[K * K][kCHUNK];
    int32_t valid[K * K][kCHUNK];
};

//! linearTaps / nearestTaps / cubicTaps of one coordinate up to setTap: the taps' coordinates
//! and weights (padding mode and align_corners fixed at compile time, so the loops vectorise).
template <Interp M, Padding P, bool AC>
struct AxisTaps;

template <Padding P, bool AC>
struct AxisTaps<Interp::kBILINEAR, P, AC>
{
    static constexpr int kK = 2;
    static void run(float g, int32_t size, float (*c)[kCHUNK], float (*w)[kCHUNK], int32_t i)
    {
        float const x = applyPadding(unnormalize(g, size, AC), size, P, AC);
        float const x0 = floorf(x);
        float const w1 = x - x0;
        c[0][i] = x0;
        c[1][i] = x0 + 1.F;
        w[0][i] = 1.F - w1;
        w[1][i] = w1;
    }
};

template <Padding P, bool AC>
struct AxisTaps<Interp::kNEAREST, P, AC>
{
    static constexpr int kK = 1;
    static void run(float g, int32_t size, float (*c)[kCHUNK], float (*w)[kCHUNK], int32_t i)
    {
        c[0][i] = rintf(applyPadding(unnormalize(g, size, AC), size, P, AC));
        w[0][i] = 1.F;
    }
};

template <Padding P, bool AC>
struct AxisTaps<Interp::kBICUBIC, P, AC>
{
    static constexpr int kK = 4;
    static void run(float g, int32_t size, float (*c)[kCHUNK], float (*w)[kCHUNK], int32_t i)
    {
        float const x = unnormalize(g, size, AC);
        float const x0 = floorf(x);
        float const f = x - x0;
        // Taps at x0 - 1 + k, rounded as cubicTaps rounds them (a huge x0 does not add exactly).
        float const below = x0 - 1.F;
        c[0][i] = applyPadding(below + 0.F, size, P, AC);
        c[1][i] = applyPadding(below + 1.F, size, P, AC);
        c[2][i] = applyPadding(below + 2.F, size, P, AC);
        c[3][i] = applyPadding(below + 3.F, size, P, AC);
        w[0][i] = cubicFar(f + 1.F);
        w[1][i] = cubicNear(f);
        w[2][i] = cubicNear(1.F - f);
        w[3][i] = cubicFar(2.F - f);
    }
};

//! setTap's validity and index for a tap coordinate c (integer-valued, or truncated as setTap
//! truncates), without branches: see the header.
inline int32_t tapValid(float c, float size)
{
    return ((c > -1.F) & (c < size)) ? -1 : 0;
}

inline int32_t tapIndex(float c, float size)
{
    return static_cast<int32_t>(((c > -1.F) & (c < size)) ? c : 0.F);
}

//! Taps of output pixels (n, oy, ox0 .. ox0 + len - 1) in two vectorised loops: coordinates and
//! weights, then offsets and validity. (In one loop, GCC folds padding's clamps into the
//! validity tests and gives up on the resulting chain of boolean selects.)
template <Source S, Interp M, Padding P, bool AC>
inline void chunkTaps(Job const& job, int64_t n, int32_t oy, int32_t ox0, int32_t len,
    ChunkTaps<AxisTaps<M, P, AC>::kK>& t)
{
    constexpr int kK = AxisTaps<M, P, AC>::kK;
    GridSampleShape const& s = job.s;
    float const* src = job.coords + n * sourceStride(S, s);
    float const* grid = src + 2 * (static_cast<int64_t>(oy) * s.outW + ox0);
    // A local copy: the compiler then knows the stores below cannot change the matrix.
    float m[9] = {};
    if (S != Source::kGRID)
    {
        for (int k = 0; k < (S == Source::kAFFINE ? 6 : 9); ++k)
        {
            m[k] = src[k];
        }
    }
    float const yt = baseCoordinate(oy, s.outH, AC);
    int32_t const inW = s.inW;
    int32_t const inH = s.inH;
    for (int32_t i = 0; i < len; ++i)
    {
        float gx;
        float gy;
        if (S == Source::kGRID)
        {
            gx = grid[2 * i];
            gy = grid[2 * i + 1];
        }
        else if (S == Source::kAFFINE)
        {
            affinePoint(m, baseCoordinate(ox0 + i, s.outW, AC), yt, gx, gy);
        }
        else
        {
            projectivePoint(m, baseCoordinate(ox0 + i, s.outW, AC), yt, gx, gy);
        }
        AxisTaps<M, P, AC>::run(gx, inW, t.cx, t.wx, i);
        AxisTaps<M, P, AC>::run(gy, inH, t.cy, t.wy, i);
    }
    float const fw = static_cast<float>(inW);
    float const fh = static_cast<float>(inH);
    for (int32_t i = 0; i < len; ++i)
    {
        for (int j = 0; j < kK; ++j)
        {
            for (int k = 0; k < kK; ++k)
            {
                t.offset[j * kK + k][i] = tapIndex(t.cy[j][i], fh) * inW + tapIndex(t.cx[k][i], fw);
                t.valid[j * kK + k][i] = tapValid(t.cy[j][i], fh) & tapValid(t.cx[k][i], fw);
            }
        }
    }
}

//! One channel plane at a chunk's taps: samplePlane's sum, over pixels in the inner loop.
//! (A function of its own: with restrict-qualified pointers GCC turns the loads into gathers.)
template <int K>
inline void samplePixels(float const* __restrict__ plane, float* __restrict__ dst, int32_t len,
    int32_t const (*__restrict__ offset)[kCHUNK], int32_t const (*__restrict__ valid)[kCHUNK],
    float const (*__restrict__ wx)[kCHUNK], float const (*__restrict__ wy)[kCHUNK])
{
    for (int32_t i = 0; i < len; ++i)
    {
        float acc = 0.F;
        for (int j = 0; j < K; ++j)
        {
            float rowAcc = 0.F;
            for (int k = 0; k < K; ++k)
            {
                float const loaded = plane[offset[j * K + k][i]];
                float const v = valid[j * K + k][i] ? loaded : 0.F;
                rowAcc += wx[k][i] * v;
            }
            acc += wy[j][i] * rowAcc;
        }
        dst[i] = acc;
    }
}

//! Rows [begin, end) of the flattened (n, oy) range.
template <Source S, Interp M, Padding P, bool AC>
void sampleRows(void* ctx, int64_t begin, int64_t end)
{
    Job const& job = *static_cast<Job const*>(ctx);
    GridSampleShape const& s = job.s;
    constexpr int kK = AxisTaps<M, P, AC>::kK;
    int64_t const inPlane = static_cast<int64_t>(s.inH) * s.inW;
    int64_t const outPlane = static_cast<int64_t>(s.outH) * s.outW;
    ChunkTaps<kK> taps;
    for (int64_t row = begin; row < end; ++row)
    {
        int64_t const n = row / s.outH;
        int32_t const oy = static_cast<int32_t>(row - n * s.outH);
        for (int32_t ox0 = 0; ox0 < s.outW; ox0 += kCHUNK)
        {
            int32_t const len = s.outW - ox0 < kCHUNK ? s.outW - ox0 : kCHUNK;
            chunkTaps<S, M, P, AC>(job, n, oy, ox0, len, taps);
            int64_t const first = static_cast<int64_t>(oy) * s.outW + ox0;
            for (int32_t c = 0; c < s.channels; ++c)
            {
                int64_t const plane = n * s.channels + c;
                samplePixels<kK>(job.in + plane * inPlane, job.out + plane * outPlane + first, len, taps.offset,
                    taps.valid, taps.wx, taps.wy);
            }
        }
    }
}

using RowKernel = void (*)(void*, int64_t, int64_t);

template <Source S, Interp M, Padding P>
RowKernel rowKernelFor(bool ac)
{
    return ac ? &sampleRows<S, M, P, true> : &sampleRows<S, M, P, false>;
}

template <Source S, Interp M>
RowKernel rowKernelFor(Padding p, bool ac)
{
    switch (p)
    {
    case Padding::kZEROS: return rowKernelFor<S, M, Padding::kZEROS>(ac);
    case Padding::kBORDER: return rowKernelFor<S, M, Padding::kBORDER>(ac);
    case Padding::kREFLECTION: return rowKernelFor<S, M, Padding::kREFLECTION>(ac);
    }
    return nullptr;
}

template <Source S>
RowKernel rowKernelFor(Interp m, Padding p, bool ac)
{
    switch (m)
    {
    case Interp::kBILINEAR: return rowKernelFor<S, Interp::kBILINEAR>(p, ac);
    case Interp::kNEAREST: return rowKernelFor<S, Interp::kNEAREST>(p, ac);
    case Interp::kBICUBIC: return rowKernelFor<S, Interp::kBICUBIC>(p, ac);
    }
    return nullptr;
}

//! Below this many output values per thread, extra threads cost more (waking them) than they save.
constexpr int64_t kMIN_VALUES_PER_THREAD = 16384;

//! The whole call: rows split over up to `threads` threads (the caller's included).
inline bool sample(Source src, Interp mode, Job& job, int32_t threads)
{
    GridSampleShape const& s = job.s;
    RowKernel kernel = nullptr;
    switch (src)
    {
    case Source::kGRID: kernel = rowKernelFor<Source::kGRID>(mode, s.padding, s.alignCorners); break;
    case Source::kAFFINE: kernel = rowKernelFor<Source::kAFFINE>(mode, s.padding, s.alignCorners); break;
    case Source::kPROJECTIVE: kernel = rowKernelFor<Source::kPROJECTIVE>(mode, s.padding, s.alignCorners); break;
    }
    if (kernel == nullptr)
    {
        return false;
    }
    int64_t const rows = s.batch * s.outH;
    int64_t const values = rows * s.outW * (s.channels > 0 ? s.channels : 1);
    int64_t useful = values / kMIN_VALUES_PER_THREAD;
    useful = useful < 1 ? 1 : useful;
    int32_t const t = threads < 1 ? 1 : (useful < threads ? static_cast<int32_t>(useful) : threads);
    // A few parts per thread: a thread slowed by another process does not hold up the call.
    ThreadPool::instance().parallelFor(rows, t, static_cast<int64_t>(t) * 4, kernel, &job);
    return true;
}

} // namespace cpu
} // namespace stn

#endif // STN_CPU_GRID_SAMPLE_FAST_H
