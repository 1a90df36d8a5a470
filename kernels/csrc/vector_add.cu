// out = x + alpha * y, elementwise: the smallest real op, used to prove that a
// .cu file becomes an importable Python extension (Bazel and the fallback).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/csrc/ops.h"

namespace lab {
namespace {

template <typename T>
__global__ void vector_add_kernel(T* __restrict__ out, const T* __restrict__ x,
                                  const T* __restrict__ y, int64_t n, float alpha) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<T>(static_cast<float>(x[i]) + alpha * static_cast<float>(y[i]));
  }
}

template <typename T>
cudaError_t launch(void* out, const void* x, const void* y, int64_t n, float alpha, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  vector_add_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(x),
                                                     static_cast<const T*>(y), n, alpha);
  return cudaGetLastError();
}

}  // namespace

cudaError_t vector_add(void* out, const void* x, const void* y, int64_t n, float alpha, DType dtype,
                       cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch<float>(out, x, y, n, alpha, stream);
    case DType::kFloat16: return launch<__half>(out, x, y, n, alpha, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(out, x, y, n, alpha, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lab
