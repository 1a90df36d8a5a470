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

// W4A16 g128 GEMV for M = 1..8 tokens on the tensor cores (kernels/csrc/gemv4.cu; layout: kernels/
// quant_gemv.py's pack_w4_gemv): y (M, N) = x (M, K) @ dequant(qw int32 (N, K / 8), scales, zeros (N, K / 128))^T.
// dtype: x / y (fp16 or bf16); scale_dtype: scales / zeros (fp16 or bf16); config: an MMA_CONFIGS index.
cudaError_t w4a16_gemv_mma(void* y, const void* x, const void* qw, const void* scales, const void* zeros, int M,
                           int N, int K, DType dtype, DType scale_dtype, int config, cudaStream_t stream);

}  // namespace lab
