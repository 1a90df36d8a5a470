// Host-side launchers of the lab's CUDA kernels. No libtorch: every launcher
// takes raw device pointers, sizes, a dtype code and the CUDA stream, and
// returns the launch's cudaError_t.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace lab {

// Must match kernels/_ext.py::DTYPE_CODES.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[i] = x[i] + alpha * y[i] for i < n. Proves the toolchain end to end.
cudaError_t vector_add(void* out, const void* x, const void* y, int64_t n, float alpha,
                       DType dtype, cudaStream_t stream);

// out = w * x / sqrt(mean(x^2) + eps) per row of `hidden` elements (fp32 math).
cudaError_t rms_norm(void* out, const void* x, const void* weight, int64_t rows, int hidden, float eps, DType dtype,
                     cudaStream_t stream);

// residual += x (in place, rounded to dtype); out = rms_norm(residual).
cudaError_t fused_add_rms_norm(void* out, void* residual, const void* x, const void* weight, int64_t rows,
                               int hidden, float eps, DType dtype, cudaStream_t stream);

// in: [rows, 2 * inter] = [gate | up]; out[rows, inter] = silu(gate) * up.
// rows <= 65535 per launch (the Python wrapper splits larger inputs).
cudaError_t silu_and_mul(void* out, const void* in, int64_t rows, int inter, DType dtype, cudaStream_t stream);

}  // namespace lab
