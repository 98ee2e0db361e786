/*
 * PyTorch CUDA extension over the GridSample launchers, for bench/gpu_check.py: the same
 * kernels TensorRT runs, called on torch tensors. The caller passes the CUDA stream handle
 * (torch.cuda.current_stream().cuda_stream), so this file needs no c10/cuda headers.
 */
#include "gridSampleKernel.h"

#include <torch/extension.h>

#include <limits>

namespace
{

using stn::GridSampleShape;
using stn::Interp;
using stn::Padding;
using stn::Source;

//! When set (bench/gpu_check.py's correctness pass), outputs start as NaN, so an element the
//! kernel never writes shows up as NaN instead of whatever the allocator's block held.
bool gPoison = false;

void setPoison(bool on)
{
    gPoison = on;
}

template <typename T, typename G>
cudaError_t dispatchSource(Source src, torch::Tensor const& x, torch::Tensor const& coords, torch::Tensor& y,
    GridSampleShape const& s, Interp mode, cudaStream_t stream)
{
    auto const* in = reinterpret_cast<T const*>(x.data_ptr());
    auto const* c = reinterpret_cast<G const*>(coords.data_ptr());
    auto* out = reinterpret_cast<T*>(y.data_ptr());
    switch (src)
    {
    case Source::kGRID: return stn::launchGridSample<T, G>(in, c, out, s, mode, stream);
    case Source::kAFFINE: return stn::launchAffineGridSample<T, G>(in, c, out, s, mode, stream);
    case Source::kPROJECTIVE: return stn::launchProjectiveGridSample<T, G>(in, c, out, s, mode, stream);
    }
    return cudaErrorInvalidValue;
}

torch::Tensor run(Source src, torch::Tensor x, torch::Tensor coords, int64_t outH, int64_t outW, int64_t mode,
    int64_t padding, bool alignCorners, int64_t streamHandle)
{
    TORCH_CHECK(x.is_cuda() && coords.is_cuda(), "tensors must be on a CUDA device");
    TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W]");
    TORCH_CHECK(mode >= 0 && mode <= 2 && padding >= 0 && padding <= 2, "bad mode/padding enum");
    x = x.contiguous();
    coords = coords.contiguous();
    auto y = torch::empty({x.size(0), x.size(1), outH, outW}, x.options());
    if (gPoison)
    {
        y.fill_(std::numeric_limits<float>::quiet_NaN());
    }
    GridSampleShape const s{x.size(0), static_cast<int32_t>(x.size(1)), static_cast<int32_t>(x.size(2)),
        static_cast<int32_t>(x.size(3)), static_cast<int32_t>(outH), static_cast<int32_t>(outW),
        static_cast<Padding>(padding), alignCorners};
    auto const m = static_cast<Interp>(mode);
    auto const stream = reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(streamHandle));
    cudaError_t status = cudaErrorInvalidValue;
    auto const xt = x.scalar_type();
    auto const ct = coords.scalar_type();
    if (xt == at::kFloat && ct == at::kFloat)
    {
        status = dispatchSource<float, float>(src, x, coords, y, s, m, stream);
    }
    else if (xt == at::kHalf && ct == at::kHalf)
    {
        status = dispatchSource<__half, __half>(src, x, coords, y, s, m, stream);
    }
    else if (xt == at::kHalf && ct == at::kFloat)
    {
        status = dispatchSource<__half, float>(src, x, coords, y, s, m, stream);
    }
    else
    {
        TORCH_CHECK(false, "supported dtypes: x float32 with float32 coordinates, or x float16 with "
                           "float16/float32 coordinates");
    }
    TORCH_CHECK(status == cudaSuccess, "GridSample kernel failed: ", cudaGetErrorString(status));
    return y;
}

torch::Tensor gridSample(
    torch::Tensor x, torch::Tensor grid, int64_t mode, int64_t padding, bool alignCorners, int64_t stream)
{
    TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2 && grid.size(0) == x.size(0), "grid must be [N, Ho, Wo, 2]");
    return run(Source::kGRID, x, grid, grid.size(1), grid.size(2), mode, padding, alignCorners, stream);
}

torch::Tensor affineGridSample(torch::Tensor x, torch::Tensor theta, int64_t outH, int64_t outW, int64_t mode,
    int64_t padding, bool alignCorners, int64_t stream)
{
    TORCH_CHECK(theta.dim() == 3 && theta.size(0) == x.size(0) && theta.size(1) == 2 && theta.size(2) == 3,
        "theta must be [N, 2, 3]");
    return run(Source::kAFFINE, x, theta, outH, outW, mode, padding, alignCorners, stream);
}

torch::Tensor projectiveGridSample(torch::Tensor x, torch::Tensor h, int64_t outH, int64_t outW, int64_t mode,
    int64_t padding, bool alignCorners, int64_t stream)
{
    TORCH_CHECK(h.dim() == 3 && h.size(0) == x.size(0) && h.size(1) == 3 && h.size(2) == 3, "h must be [N, 3, 3]");
    return run(Source::kPROJECTIVE, x, h, outH, outW, mode, padding, alignCorners, stream);
}

//! kHWC8: xp [N, H, W, Cp] fp16 (Cp = round_up(channels, 8)) -> [N, Ho, Wo, Cp].
torch::Tensor runHWC8(Source src, torch::Tensor xp, torch::Tensor coords, int64_t channels, int64_t outH,
    int64_t outW, int64_t mode, int64_t padding, bool alignCorners, int64_t streamHandle)
{
    TORCH_CHECK(xp.is_cuda() && coords.is_cuda(), "tensors must be on a CUDA device");
    TORCH_CHECK(xp.dim() == 4 && xp.scalar_type() == at::kHalf, "xp must be float16 [N, H, W, Cp]");
    TORCH_CHECK(xp.size(3) == stn::paddedChannels(static_cast<int32_t>(channels)), "Cp must be round_up(C, 8)");
    bool const gridOk = src == Source::kGRID
        ? (coords.dim() == 4 && coords.size(0) == xp.size(0) && coords.size(1) == outH && coords.size(2) == outW
            && coords.size(3) == 2)
        : (coords.dim() == 3 && coords.size(0) == xp.size(0) && coords.size(1) == (src == Source::kAFFINE ? 2 : 3)
            && coords.size(2) == 3);
    TORCH_CHECK(gridOk, "coordinates do not match the source kind / batch / output size");
    TORCH_CHECK(mode >= 0 && mode <= 2 && padding >= 0 && padding <= 2, "bad mode/padding enum");
    xp = xp.contiguous();
    coords = coords.contiguous();
    auto y = torch::empty({xp.size(0), outH, outW, xp.size(3)}, xp.options());
    if (gPoison)
    {
        y.fill_(std::numeric_limits<float>::quiet_NaN());
    }
    GridSampleShape const s{xp.size(0), static_cast<int32_t>(channels), static_cast<int32_t>(xp.size(1)),
        static_cast<int32_t>(xp.size(2)), static_cast<int32_t>(outH), static_cast<int32_t>(outW),
        static_cast<Padding>(padding), alignCorners};
    auto const m = static_cast<Interp>(mode);
    auto const stream = reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(streamHandle));
    auto const* in = reinterpret_cast<__half const*>(xp.data_ptr());
    auto* out = reinterpret_cast<__half*>(y.data_ptr());
    cudaError_t status = cudaErrorInvalidValue;
    if (coords.scalar_type() == at::kHalf)
    {
        auto const* c = reinterpret_cast<__half const*>(coords.data_ptr());
        status = src == Source::kGRID ? stn::launchGridSampleHWC8<__half>(in, c, out, s, m, stream)
            : src == Source::kAFFINE  ? stn::launchAffineGridSampleHWC8<__half>(in, c, out, s, m, stream)
                                      : stn::launchProjectiveGridSampleHWC8<__half>(in, c, out, s, m, stream);
    }
    else
    {
        TORCH_CHECK(coords.scalar_type() == at::kFloat, "coordinates must be float16 or float32");
        auto const* c = reinterpret_cast<float const*>(coords.data_ptr());
        status = src == Source::kGRID ? stn::launchGridSampleHWC8<float>(in, c, out, s, m, stream)
            : src == Source::kAFFINE  ? stn::launchAffineGridSampleHWC8<float>(in, c, out, s, m, stream)
                                      : stn::launchProjectiveGridSampleHWC8<float>(in, c, out, s, m, stream);
    }
    TORCH_CHECK(status == cudaSuccess, "GridSample kHWC8 kernel failed: ", cudaGetErrorString(status));
    return y;
}

torch::Tensor hwc8(int64_t source, torch::Tensor xp, torch::Tensor coords, int64_t channels, int64_t outH,
    int64_t outW, int64_t mode, int64_t padding, bool alignCorners, int64_t stream)
{
    TORCH_CHECK(source >= 0 && source <= 2, "source: 0 grid, 1 affine, 2 projective");
    return runHWC8(static_cast<Source>(source), xp, coords, channels, outH, outW, mode, padding, alignCorners, stream);
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("grid_sample", &gridSample, "Y = X sampled at grid [N,Ho,Wo,2]");
    m.def("affine_grid_sample", &affineGridSample, "Y = X sampled at F.affine_grid(theta), fused");
    m.def("projective_grid_sample", &projectiveGridSample, "Y = X sampled at a homography's points, fused");
    m.def("set_poison", &setPoison, "fill every output with NaN before the kernel runs (checks)");
    m.def("hwc8", &hwc8, "kHWC8 fp16 variant: (source, xp [N,H,W,Cp], coords, C, Ho, Wo, mode, padding, ac, stream)");
}
