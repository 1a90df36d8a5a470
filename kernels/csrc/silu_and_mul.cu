// silu_and_mul: input [rows, 2*I] holding gate then up; out[r, i] = silu(gate) * up,
// with silu(g) = g / (1 + exp(-g)), math in fp32, one rounding to T at the end.
#include "kernels/csrc/common.cuh"
#include "kernels/csrc/ops.h"

namespace lab {
namespace {

template <typename T, int VEC>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int inter) {
  using V = Vec<T, VEC>;
  const int64_t row = blockIdx.y;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // vector index within the row
  if (idx >= inter / VEC) return;
  const V g = reinterpret_cast<const V*>(in + row * 2 * inter)[idx];
  const V u = reinterpret_cast<const V*>(in + row * 2 * inter + inter)[idx];
  V o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float gf = to_float(g.v[j]);
    o.v[j] = from_float<T>(gf / (1.f + __expf(-gf)) * to_float(u.v[j]));
  }
  reinterpret_cast<V*>(out + row * inter)[idx] = o;
}

template <typename T>
cudaError_t launch(void* out, const void* in, int64_t rows, int inter, cudaStream_t stream) {
  if (rows == 0 || inter == 0) return cudaSuccess;
  if (rows > 65535) return cudaErrorInvalidValue;  // grid.y limit; the wrapper splits rows
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kThreads = 256;
  const bool can_vec = inter % kVec == 0 && aligned16(out) && aligned16(in);
  const int vec = can_vec ? kVec : 1;
  const dim3 grid((inter / vec + kThreads - 1) / kThreads, static_cast<unsigned>(rows));
  if (can_vec) {
    silu_and_mul_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(in), inter);
  } else {
    silu_and_mul_kernel<T, 1><<<grid, kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(in), inter);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t silu_and_mul(void* out, const void* in, int64_t rows, int inter, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch<float>(out, in, rows, inter, stream);
    case DType::kFloat16: return launch<__half>(out, in, rows, inter, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(out, in, rows, inter, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lab
