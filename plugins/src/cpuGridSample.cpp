/*
 * CPU build of the GridSample kernels, exposed through a C ABI for ctypes
 * (stn_deploy.plugins.cpu) and ONNX Runtime. Two sets of entry points over the same
 * __host__ __device__ functions as gridSampleKernel.cu (gridSampleMath.h, gridSampleHwc8.h):
 * - stn_*_f32: the reference, one pixel at a time in one loop, exactly as a CUDA thread does it
 *   (also the channels-last kHWC8 variants);
 * - stn_cpu_sample_f32: the production kernels (cpuGridSampleFast.h): threaded over N x output
 *   rows, vectorised over pixels, bit-identical to the reference.
 * fp32 storage; fp16 storage is handled by the caller (load half -> float exactly, store float
 * -> half RNE), which is what the fp16 kernels do element by element.
 */
#include "cpuGridSampleFast.h"
#include "gridSampleHwc8.h"

namespace
{

using stn::GridSampleShape;
using stn::Interp;
using stn::Padding;
using stn::Source;

// Return codes of the C ABI.
constexpr int32_t kOK = 0;
constexpr int32_t kBAD_ARGUMENT = 1;

template <Source S, Interp M>
void sampleAll(float const* in, float const* coords, float* out, GridSampleShape const& s)
{
    int32_t const pixels = s.outH * s.outW;
    for (int64_t n = 0; n < s.batch; ++n)
    {
        for (int32_t pix = 0; pix < pixels; ++pix)
        {
            stn::samplePixel<S, M, float, float>(in, coords, out, n, pix, s);
        }
    }
}

template <Source S, Interp M>
void sampleAllHWC(float const* in, float const* coords, float* out, GridSampleShape const& s)
{
    int32_t const pixels = s.outH * s.outW;
    int32_t const groups = static_cast<int32_t>(stn::paddedChannels(s.channels) / stn::kHWC_GROUP);
    for (int64_t n = 0; n < s.batch; ++n)
    {
        for (int32_t pix = 0; pix < pixels; ++pix)
        {
            for (int32_t g = 0; g < groups; ++g)
            {
                stn::samplePixelGroupHWC<S, M, float, float>(in, coords, out, n, pix, g, s);
            }
        }
    }
}

template <Source S, Interp M>
void sampleLayout(bool hwc, float const* in, float const* coords, float* out, GridSampleShape const& s)
{
    if (hwc)
    {
        sampleAllHWC<S, M>(in, coords, out, s);
    }
    else
    {
        sampleAll<S, M>(in, coords, out, s);
    }
}

template <Source S>
int32_t run(float const* in, float const* coords, float* out, int64_t n, int32_t c, int32_t h, int32_t w,
    int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners, bool hwc = false)
{
    if (in == nullptr || coords == nullptr || out == nullptr || n < 0 || c < 0 || h <= 0 || w <= 0 || outH < 0
        || outW < 0 || padding < 0 || padding > 2 || static_cast<int64_t>(outH) * outW > INT32_MAX)
    {
        return kBAD_ARGUMENT;
    }
    GridSampleShape const s{n, c, h, w, outH, outW, static_cast<Padding>(padding), alignCorners != 0};
    switch (static_cast<Interp>(mode))
    {
    case Interp::kBILINEAR: sampleLayout<S, Interp::kBILINEAR>(hwc, in, coords, out, s); return kOK;
    case Interp::kNEAREST: sampleLayout<S, Interp::kNEAREST>(hwc, in, coords, out, s); return kOK;
    case Interp::kBICUBIC: sampleLayout<S, Interp::kBICUBIC>(hwc, in, coords, out, s); return kOK;
    }
    return kBAD_ARGUMENT;
}

template <Source S>
int32_t runFast(float const* in, float const* coords, float* out, int64_t n, int32_t c, int32_t h, int32_t w,
    int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners, int32_t threads) noexcept
{
    if (in == nullptr || coords == nullptr || out == nullptr || n < 0 || c < 0 || h <= 0 || w <= 0 || outH < 0
        || outW < 0 || padding < 0 || padding > 2 || mode < 0 || mode > 2
        || static_cast<int64_t>(outH) * outW > INT32_MAX)
    {
        return kBAD_ARGUMENT;
    }
    if (static_cast<int64_t>(h) * w > INT32_MAX)
    {
        // Plane offsets are int32 in the production kernels; a bigger plane takes the reference.
        return run<S>(in, coords, out, n, c, h, w, outH, outW, mode, padding, alignCorners);
    }
    stn::cpu::Job job{in, coords, out,
        GridSampleShape{n, c, h, w, outH, outW, static_cast<Padding>(padding), alignCorners != 0}};
    return stn::cpu::sample(S, static_cast<Interp>(mode), job, threads) ? kOK : kBAD_ARGUMENT;
}

} // namespace

extern "C"
{

//! Version of this C ABI; stn_deploy.plugins.cpu checks it after loading.
int32_t stn_cpu_abi_version()
{
    return 2;
}

//! The production kernels: Y [N,C,outH,outW] from X [N,C,H,W] and coordinates (source 0: grid
//! [N,outH,outW,2]; 1: theta [N,2,3]; 2: homography [N,3,3]) on up to `threads` threads.
//! Returns 0 on success, 1 for bad arguments; never throws.
int32_t stn_cpu_sample_f32(int32_t source, float const* x, float const* coords, float* y, int64_t n, int32_t c,
    int32_t h, int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners,
    int32_t threads)
{
    try
    {
        switch (static_cast<Source>(source))
        {
        case Source::kGRID:
            return runFast<Source::kGRID>(x, coords, y, n, c, h, w, outH, outW, mode, padding, alignCorners, threads);
        case Source::kAFFINE:
            return runFast<Source::kAFFINE>(
                x, coords, y, n, c, h, w, outH, outW, mode, padding, alignCorners, threads);
        case Source::kPROJECTIVE:
            return runFast<Source::kPROJECTIVE>(
                x, coords, y, n, c, h, w, outH, outW, mode, padding, alignCorners, threads);
        }
    }
    catch (...)
    {
    }
    return kBAD_ARGUMENT;
}

//! Y [N,C,outH,outW] = X [N,C,H,W] sampled at grid [N,outH,outW,2]. Returns 0 on success.
int32_t stn_grid_sample_f32(float const* x, float const* grid, float* y, int64_t n, int32_t c, int32_t h, int32_t w,
    int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kGRID>(x, grid, y, n, c, h, w, outH, outW, mode, padding, alignCorners);
}

//! Fused F.affine_grid(theta [N,2,3]) + grid_sample.
int32_t stn_affine_grid_sample_f32(float const* x, float const* theta, float* y, int64_t n, int32_t c, int32_t h,
    int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kAFFINE>(x, theta, y, n, c, h, w, outH, outW, mode, padding, alignCorners);
}

//! Fused homography (h [N,3,3]) grid + grid_sample.
int32_t stn_projective_grid_sample_f32(float const* x, float const* hom, float* y, int64_t n, int32_t c, int32_t h,
    int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kPROJECTIVE>(x, hom, y, n, c, h, w, outH, outW, mode, padding, alignCorners);
}

//! The same three ops on channels-last tensors with channels padded to a multiple of 8
//! (TensorRT's kHWC8 layout, here in fp32): x [N,H,W,Cp], y [N,outH,outW,Cp], Cp = roundup(C, 8).
int32_t stn_grid_sample_hwc8_f32(float const* x, float const* grid, float* y, int64_t n, int32_t c, int32_t h,
    int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kGRID>(x, grid, y, n, c, h, w, outH, outW, mode, padding, alignCorners, true);
}

int32_t stn_affine_grid_sample_hwc8_f32(float const* x, float const* theta, float* y, int64_t n, int32_t c,
    int32_t h, int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kAFFINE>(x, theta, y, n, c, h, w, outH, outW, mode, padding, alignCorners, true);
}

int32_t stn_projective_grid_sample_hwc8_f32(float const* x, float const* hom, float* y, int64_t n, int32_t c,
    int32_t h, int32_t w, int32_t outH, int32_t outW, int32_t mode, int32_t padding, int32_t alignCorners)
{
    return run<Source::kPROJECTIVE>(x, hom, y, n, c, h, w, outH, outW, mode, padding, alignCorners, true);
}

} // extern "C"
