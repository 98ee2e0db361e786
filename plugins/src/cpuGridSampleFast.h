/*
 * Production CPU kernels: the same sampling math as the reference loop (gridSampleMath.h, whose
 * __host__ __device__ functions are called here), arranged for a CPU. Work is N x output rows,
 * split over a thread pool; rows are processed in chunks of up to kCHUNK pixels (whole rows when
 * a row is shorter), in loops over contiguous arrays that the compiler vectorises (16 pixels per
 * instruction with AVX-512; the loops tagged STN_VECTORISED, checked by
 * tests/plugins/test_cpu_vectorised.py):
 *   1. the chunk's source points: read from the grid, or computed from theta / the homography
 *      (the fused paths never materialise a grid);
 *   2. each axis's tap coordinates and weights, from the shared unnormalize / padding / weight
 *      functions;
 *   3. the taps' plane offsets and validity;
 *   4. per channel, the taps read and summed in exactly samplePlane's order, so results are
 *      bit-identical to the reference (tests/plugins/test_cpu_fast.py). Bilinear is the fast
 *      path: each tap row's two columns come from one 8-byte load.
 * Validity: the reference (setTap) accepts a tap when -1 < c < size and then 0 <= trunc(c) <
 * size; for any c in (-1, size) trunc(c) is in [0, size - 1], so the float test alone decides,
 * which is what lets it vectorise. Invalid taps read a valid address and are replaced by 0 after
 * the load, as in samplePlane (a NaN weight still makes NaN).
 */
#ifndef STN_CPU_GRID_SAMPLE_FAST_H
#define STN_CPU_GRID_SAMPLE_FAST_H

#include "cpuThreadPool.h"
#include "gridSampleMath.h"

#include <algorithm>
#include <cstring>

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
    // Bilinear fast path: per tap row, the offset of an adjacent pair (px, px + 1) holding both
    // column taps, and per column tap whether it is the pair's second element.
    int32_t pairBase[2][kCHUNK];
    int32_t useHigh[2][kCHUNK];
};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kLITTLE_ENDIAN = true;
#else
constexpr bool kLITTLE_ENDIAN = false;
#endif

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

//! Where a chunk lies: `rows` whole output rows from (n, oy) when a row is at most kCHUNK pixels
//! (small outputs such as 28x28 then still fill the vectors), else `cols` pixels of one row from
//! column ox0. Its pixels are contiguous in the output plane either way.
struct Chunk
{
    int64_t n;
    int32_t oy;
    int32_t ox0;
    int32_t rows;
    int32_t cols;
};

//! Source points of a chunk's pixels: read from the grid, or computed from theta / the
//! homography (the fused paths), one vectorised loop per row.
template <Source S, bool AC>
inline void chunkPoints(Job const& job, Chunk const& q, float* __restrict__ gx, float* __restrict__ gy)
{
    GridSampleShape const& s = job.s;
    float const* src = job.coords + q.n * sourceStride(S, s);
    if (S == Source::kGRID)
    {
        float const* grid = src + 2 * (static_cast<int64_t>(q.oy) * s.outW + q.ox0);
        for (int32_t i = 0; i < q.rows * q.cols; ++i)  // STN_VECTORISED: points (grid)
        {
            gx[i] = grid[2 * i];
            gy[i] = grid[2 * i + 1];
        }
        return;
    }
    // A local copy: the compiler then knows the stores below cannot change the matrix.
    float m[9] = {};
    for (int k = 0; k < (S == Source::kAFFINE ? 6 : 9); ++k)
    {
        m[k] = src[k];
    }
    for (int32_t r = 0; r < q.rows; ++r)
    {
        float const yt = baseCoordinate(q.oy + r, s.outH, AC);
        float* __restrict__ rx = gx + r * q.cols;
        float* __restrict__ ry = gy + r * q.cols;
        for (int32_t i = 0; i < q.cols; ++i)  // STN_VECTORISED: points (affine, projective)
        {
            float const xt = baseCoordinate(q.ox0 + i, s.outW, AC);
            if (S == Source::kAFFINE)
            {
                affinePoint(m, xt, yt, rx[i], ry[i]);
            }
            else
            {
                projectivePoint(m, xt, yt, rx[i], ry[i]);
            }
        }
    }
}

//! Tap coordinates and weights of a chunk's pixels, one vectorised loop. Offsets and validity
//! come in another loop (chunkOffsets / chunkPairs): in one loop, GCC folds padding's clamps
//! into the validity tests and gives up on the resulting chain of boolean selects.
template <Source S, Interp M, Padding P, bool AC>
inline void chunkCoordinates(Job const& job, Chunk const& q, ChunkTaps<AxisTaps<M, P, AC>::kK>& t)
{
    float gx[kCHUNK];
    float gy[kCHUNK];
    chunkPoints<S, AC>(job, q, gx, gy);
    int32_t const inW = job.s.inW;
    int32_t const inH = job.s.inH;
    for (int32_t i = 0; i < q.rows * q.cols; ++i)  // STN_VECTORISED: tap coordinates
    {
        AxisTaps<M, P, AC>::run(gx[i], inW, t.cx, t.wx, i);
        AxisTaps<M, P, AC>::run(gy[i], inH, t.cy, t.wy, i);
    }
}

//! Plane offsets and validity of every tap pair (row j, column k) of a chunk.
template <int K>
inline void chunkOffsets(GridSampleShape const& s, int32_t len, ChunkTaps<K>& t)
{
    int32_t const inW = s.inW;
    float const fw = static_cast<float>(s.inW);
    float const fh = static_cast<float>(s.inH);
    for (int32_t i = 0; i < len; ++i)  // STN_VECTORISED: offsets (not bicubic's 16)
    {
        for (int j = 0; j < K; ++j)
        {
            for (int k = 0; k < K; ++k)
            {
                t.offset[j * K + k][i] = tapIndex(t.cy[j][i], fh) * inW + tapIndex(t.cx[k][i], fw);
                t.valid[j * K + k][i] = tapValid(t.cy[j][i], fh) & tapValid(t.cx[k][i], fw);
            }
        }
    }
}

//! Bilinear taps as pairs (needs inW >= 2): the column taps x0 and x0 + 1 of a row sit in the
//! adjacent pair (px, px + 1) with px = clamp(x0, 0, inW - 2), so one 8-byte load reads both.
//! Where a tap is valid (0 <= x < inW) it is the pair's first element when x == px, else its
//! second: x0 == inW - 1 reads the second element of (inW - 2, inW - 1), x0 + 1 == 0 (x0 = -1)
//! the first of (0, 1). The load stays in the plane: px + 1 <= inW - 1.
inline void chunkPairs(GridSampleShape const& s, int32_t len, ChunkTaps<2>& t)
{
    int32_t const inW = s.inW;
    float const fw = static_cast<float>(s.inW);
    float const fh = static_cast<float>(s.inH);
    float const lastPair = static_cast<float>(s.inW - 2);
    for (int32_t i = 0; i < len; ++i)  // STN_VECTORISED: bilinear pairs
    {
        float const x0 = t.cx[0][i];
        // Selects rather than fmaxf/fminf (which GCC does not vectorise); a NaN x0 (its taps are
        // invalid) loads pair 0.
        float const above = x0 > 0.F ? x0 : 0.F;
        int32_t const px = static_cast<int32_t>(above < lastPair ? above : lastPair);
        t.useHigh[0][i] = (x0 > lastPair) ? -1 : 0;
        t.useHigh[1][i] = (x0 < 0.F) ? 0 : -1;
        for (int j = 0; j < 2; ++j)
        {
            t.pairBase[j][i] = tapIndex(t.cy[j][i], fh) * inW + px;
            for (int k = 0; k < 2; ++k)
            {
                t.valid[j * 2 + k][i] = tapValid(t.cy[j][i], fh) & tapValid(t.cx[k][i], fw);
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
    for (int32_t i = 0; i < len; ++i)  // STN_VECTORISED: sampling
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

//! The bilinear fast path for one channel plane: two 8-byte loads per output value instead of
//! four 4-byte ones, the same products and sums as samplePixels<2>.
inline void samplePairs(float const* __restrict__ plane, float* __restrict__ dst, int32_t len,
    int32_t const (*__restrict__ base)[kCHUNK], int32_t const (*__restrict__ useHigh)[kCHUNK],
    int32_t const (*__restrict__ valid)[kCHUNK], float const (*__restrict__ wx)[kCHUNK],
    float const (*__restrict__ wy)[kCHUNK])
{
    for (int32_t i = 0; i < len; ++i)  // STN_VECTORISED: bilinear sampling
    {
        float acc = 0.F;
        for (int j = 0; j < 2; ++j)
        {
            uint64_t pair;
            memcpy(&pair, plane + base[j][i], sizeof(pair));
            uint32_t const low = static_cast<uint32_t>(pair);
            uint32_t const high = static_cast<uint32_t>(pair >> 32);
            uint32_t const bits0 = useHigh[0][i] ? high : low;
            uint32_t const bits1 = useHigh[1][i] ? high : low;
            float v0;
            float v1;
            memcpy(&v0, &bits0, sizeof(v0));
            memcpy(&v1, &bits1, sizeof(v1));
            float rowAcc = 0.F;
            rowAcc += wx[0][i] * (valid[j * 2][i] ? v0 : 0.F);
            rowAcc += wx[1][i] * (valid[j * 2 + 1][i] ? v1 : 0.F);
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
    int32_t const rowsPerChunk = s.outW <= kCHUNK && s.outW > 0 ? kCHUNK / s.outW : 1;
    ChunkTaps<kK> taps;
    for (int64_t row = begin; row < end;)
    {
        Chunk q{row / s.outH, 0, 0, 1, 0};
        q.oy = static_cast<int32_t>(row - q.n * s.outH);
        // whole rows of one image, within [begin, end)
        int64_t const rows = std::min<int64_t>({rowsPerChunk, end - row, s.outH - q.oy});
        q.rows = static_cast<int32_t>(rows);
        for (q.ox0 = 0; q.ox0 < s.outW; q.ox0 += kCHUNK)
        {
            q.cols = s.outW - q.ox0 < kCHUNK ? s.outW - q.ox0 : kCHUNK;
            int32_t const len = q.rows * q.cols;
            chunkCoordinates<S, M, P, AC>(job, q, taps);
            int64_t const first = static_cast<int64_t>(q.oy) * s.outW + q.ox0;
            if constexpr (M == Interp::kBILINEAR && kLITTLE_ENDIAN)
            {
                if (s.inW >= 2)
                {
                    chunkPairs(s, len, taps);
                    for (int32_t c = 0; c < s.channels; ++c)
                    {
                        int64_t const plane = q.n * s.channels + c;
                        samplePairs(job.in + plane * inPlane, job.out + plane * outPlane + first, len,
                            taps.pairBase, taps.useHigh, taps.valid, taps.wx, taps.wy);
                    }
                    continue;
                }
            }
            chunkOffsets<kK>(s, len, taps);
            for (int32_t c = 0; c < s.channels; ++c)
            {
                int64_t const plane = q.n * s.channels + c;
                samplePixels<kK>(job.in + plane * inPlane, job.out + plane * outPlane + first, len, taps.offset,
                    taps.valid, taps.wx, taps.wy);
            }
        }
        row += rows;
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
