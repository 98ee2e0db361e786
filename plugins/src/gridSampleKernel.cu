/*
 * CUDA kernels of the GridSample plugin. One thread per output pixel computes the pixel's taps
 * and weights once (they do not depend on the channel) and loops over the channels with them.
 * The fused affine/projective kernels compute the source point from theta/h in registers and
 * never write a grid tensor. Batch runs along gridDim.y (strided when N > 65535); pixels along x
 * with a 32-bit index (Ho*Wo < 2^31 is checked); every tensor offset is 64-bit.
 */
#include "gridSampleKernel.h"

#include <limits>

namespace stn
{
namespace
{

constexpr int32_t kBLOCK = 256;
constexpr int64_t kMAX_GRID_X = 1 << 16;
constexpr int64_t kMAX_GRID_Y = 65535;

template <Source S, Interp M, typename T, typename G>
__global__ void __launch_bounds__(kBLOCK, 2) gridSampleKernel(
    T const* __restrict__ input, G const* __restrict__ coords, T* __restrict__ output, GridSampleShape shape)
{
    int32_t const pixels = shape.outH * shape.outW;
    for (int64_t n = blockIdx.y; n < shape.batch; n += gridDim.y)
    {
        for (int32_t pix = blockIdx.x * kBLOCK + threadIdx.x; pix < pixels; pix += gridDim.x * kBLOCK)
        {
            samplePixel<S, M, T, G>(input, coords, output, n, pix, shape);
        }
    }
}

//! kHWC8: one thread per (output pixel, group of 8 channels); the group index runs fastest, so a
//! warp reads whole 16-byte channel groups of neighbouring source pixels.
template <Source S, Interp M, typename G>
__global__ void __launch_bounds__(kBLOCK, 2) gridSampleHWC8Kernel(
    __half const* __restrict__ input, G const* __restrict__ coords, __half* __restrict__ output, GridSampleShape shape)
{
    int32_t const groups = static_cast<int32_t>(paddedChannels(shape.channels) / kHWC_GROUP);
    int32_t const work = shape.outH * shape.outW * groups;
    for (int64_t n = blockIdx.y; n < shape.batch; n += gridDim.y)
    {
        for (int32_t i = blockIdx.x * kBLOCK + threadIdx.x; i < work; i += gridDim.x * kBLOCK)
        {
            int32_t const pix = i / groups;
            samplePixelGroupHWC<S, M, __half, G>(input, coords, output, n, pix, i - pix * groups, shape);
        }
    }
}

bool validShape(GridSampleShape const& s)
{
    if (s.batch < 0 || s.channels < 0 || s.inH <= 0 || s.inW <= 0 || s.outH < 0 || s.outW < 0)
    {
        return false;
    }
    int64_t const pixels = static_cast<int64_t>(s.outH) * s.outW;
    // pix is int32 and pix + gridDim.x * kBLOCK must not overflow.
    return pixels <= std::numeric_limits<int32_t>::max() - kMAX_GRID_X * kBLOCK;
}

bool validHWC8Shape(GridSampleShape const& s)
{
    int64_t const work = static_cast<int64_t>(s.outH) * s.outW * (paddedChannels(s.channels) / kHWC_GROUP);
    return validShape(s) && work <= std::numeric_limits<int32_t>::max() - kMAX_GRID_X * kBLOCK;
}

enum class Precheck
{
    kRUN,
    kNOTHING_TO_DO,
    kINVALID
};

//! The checks every launcher makes before it launches: shape and padding valid, work non-empty,
//! buffers present (an empty output with null buffers is fine: nothing is read or written).
Precheck precheck(bool shapeOk, void const* input, void const* coords, void const* output, GridSampleShape const& s)
{
    if (!shapeOk
        || (s.padding != Padding::kZEROS && s.padding != Padding::kBORDER && s.padding != Padding::kREFLECTION))
    {
        return Precheck::kINVALID;
    }
    if (s.batch == 0 || s.channels == 0 || s.outH == 0 || s.outW == 0)
    {
        return Precheck::kNOTHING_TO_DO;
    }
    if (input == nullptr || coords == nullptr || output == nullptr)
    {
        return Precheck::kINVALID;
    }
    return Precheck::kRUN;
}

template <Source S, Interp M, typename T, typename G>
cudaError_t launchMode(T const* input, G const* coords, T* output, GridSampleShape const& s, cudaStream_t stream)
{
    int64_t const pixels = static_cast<int64_t>(s.outH) * s.outW;
    int64_t const blocksX = (pixels + kBLOCK - 1) / kBLOCK;
    dim3 const grid(static_cast<uint32_t>(blocksX < kMAX_GRID_X ? blocksX : kMAX_GRID_X),
        static_cast<uint32_t>(s.batch < kMAX_GRID_Y ? s.batch : kMAX_GRID_Y));
    gridSampleKernel<S, M, T, G><<<grid, kBLOCK, 0, stream>>>(input, coords, output, s);
    return cudaGetLastError();
}

template <Source S, typename T, typename G>
cudaError_t launch(
    T const* input, G const* coords, T* output, GridSampleShape const& s, Interp mode, cudaStream_t stream)
{
    Precheck const pre = precheck(validShape(s), input, coords, output, s);
    if (pre != Precheck::kRUN)
    {
        return pre == Precheck::kNOTHING_TO_DO ? cudaSuccess : cudaErrorInvalidValue;
    }
    switch (mode)
    {
    case Interp::kBILINEAR: return launchMode<S, Interp::kBILINEAR>(input, coords, output, s, stream);
    case Interp::kNEAREST: return launchMode<S, Interp::kNEAREST>(input, coords, output, s, stream);
    case Interp::kBICUBIC: return launchMode<S, Interp::kBICUBIC>(input, coords, output, s, stream);
    }
    return cudaErrorInvalidValue;
}

template <Source S, Interp M, typename G>
cudaError_t launchModeHWC8(
    __half const* input, G const* coords, __half* output, GridSampleShape const& s, cudaStream_t stream)
{
    int64_t const work = static_cast<int64_t>(s.outH) * s.outW * (paddedChannels(s.channels) / kHWC_GROUP);
    int64_t const blocksX = (work + kBLOCK - 1) / kBLOCK;
    dim3 const grid(static_cast<uint32_t>(blocksX < kMAX_GRID_X ? blocksX : kMAX_GRID_X),
        static_cast<uint32_t>(s.batch < kMAX_GRID_Y ? s.batch : kMAX_GRID_Y));
    gridSampleHWC8Kernel<S, M, G><<<grid, kBLOCK, 0, stream>>>(input, coords, output, s);
    return cudaGetLastError();
}

template <Source S, typename G>
cudaError_t launchHWC8(
    __half const* input, G const* coords, __half* output, GridSampleShape const& s, Interp mode, cudaStream_t stream)
{
    Precheck const pre = precheck(validHWC8Shape(s), input, coords, output, s);
    if (pre != Precheck::kRUN)
    {
        return pre == Precheck::kNOTHING_TO_DO ? cudaSuccess : cudaErrorInvalidValue;
    }
    switch (mode)
    {
    case Interp::kBILINEAR: return launchModeHWC8<S, Interp::kBILINEAR>(input, coords, output, s, stream);
    case Interp::kNEAREST: return launchModeHWC8<S, Interp::kNEAREST>(input, coords, output, s, stream);
    case Interp::kBICUBIC: return launchModeHWC8<S, Interp::kBICUBIC>(input, coords, output, s, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace

template <typename G>
cudaError_t launchGridSampleHWC8(
    __half const* input, G const* grid, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launchHWC8<Source::kGRID>(input, grid, output, shape, mode, stream);
}

template <typename G>
cudaError_t launchAffineGridSampleHWC8(
    __half const* input, G const* theta, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launchHWC8<Source::kAFFINE>(input, theta, output, shape, mode, stream);
}

template <typename G>
cudaError_t launchProjectiveGridSampleHWC8(
    __half const* input, G const* h, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launchHWC8<Source::kPROJECTIVE>(input, h, output, shape, mode, stream);
}

#define STN_INSTANTIATE_HWC8(G)                                                                                        \
    template cudaError_t launchGridSampleHWC8<G>(                                                                      \
        __half const*, G const*, __half*, GridSampleShape const&, Interp, cudaStream_t);                               \
    template cudaError_t launchAffineGridSampleHWC8<G>(                                                                \
        __half const*, G const*, __half*, GridSampleShape const&, Interp, cudaStream_t);                               \
    template cudaError_t launchProjectiveGridSampleHWC8<G>(                                                            \
        __half const*, G const*, __half*, GridSampleShape const&, Interp, cudaStream_t);

STN_INSTANTIATE_HWC8(__half)
STN_INSTANTIATE_HWC8(float)

#undef STN_INSTANTIATE_HWC8

template <typename T, typename G>
cudaError_t launchGridSample(
    T const* input, G const* grid, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launch<Source::kGRID>(input, grid, output, shape, mode, stream);
}

template <typename T, typename G>
cudaError_t launchAffineGridSample(
    T const* input, G const* theta, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launch<Source::kAFFINE>(input, theta, output, shape, mode, stream);
}

template <typename T, typename G>
cudaError_t launchProjectiveGridSample(
    T const* input, G const* h, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream)
{
    return launch<Source::kPROJECTIVE>(input, h, output, shape, mode, stream);
}

#define STN_INSTANTIATE(T, G)                                                                                          \
    template cudaError_t launchGridSample<T, G>(                                                                       \
        T const*, G const*, T*, GridSampleShape const&, Interp, cudaStream_t);                                         \
    template cudaError_t launchAffineGridSample<T, G>(                                                                 \
        T const*, G const*, T*, GridSampleShape const&, Interp, cudaStream_t);                                         \
    template cudaError_t launchProjectiveGridSample<T, G>(                                                             \
        T const*, G const*, T*, GridSampleShape const&, Interp, cudaStream_t);

STN_INSTANTIATE(float, float)
STN_INSTANTIATE(__half, __half)
STN_INSTANTIATE(__half, float)

#undef STN_INSTANTIATE

} // namespace stn
