/*
 * Launchers of the GridSample kernels: generic (grid input), fused affine (theta [N,2,3]) and
 * fused projective (h [N,3,3]). They know nothing of TensorRT: plain pointers, a shape, a
 * stream, and a cudaError_t back. T is the storage type of X and Y (float or __half); G the type
 * of the grid/theta/h input (float, or __half when T is __half). Math is always fp32.
 */
#ifndef STN_GRID_SAMPLE_KERNEL_H
#define STN_GRID_SAMPLE_KERNEL_H

#include "gridSampleHwc8.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace stn
{

//! Y [N,C,Ho,Wo] = X [N,C,H,W] sampled at grid [N,Ho,Wo,2].
template <typename T, typename G>
cudaError_t launchGridSample(
    T const* input, G const* grid, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

//! Y = X sampled at F.affine_grid(theta, [N,C,Ho,Wo]) without materialising the grid.
template <typename T, typename G>
cudaError_t launchAffineGridSample(
    T const* input, G const* theta, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

//! Y = X sampled at the homography's source points (x, y) / z, without materialising the grid.
template <typename T, typename G>
cudaError_t launchProjectiveGridSample(
    T const* input, G const* h, T* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

//! The same three ops on fp16 tensors in TensorRT's kHWC8 layout: X [N,H,W,Cp], Y [N,Ho,Wo,Cp],
//! Cp = round_up(C, 8) (padding channels of Y are written as 0); coordinates stay linear.
template <typename G>
cudaError_t launchGridSampleHWC8(
    __half const* input, G const* grid, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

template <typename G>
cudaError_t launchAffineGridSampleHWC8(
    __half const* input, G const* theta, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

template <typename G>
cudaError_t launchProjectiveGridSampleHWC8(
    __half const* input, G const* h, __half* output, GridSampleShape const& shape, Interp mode, cudaStream_t stream);

} // namespace stn

#endif // STN_GRID_SAMPLE_KERNEL_H
