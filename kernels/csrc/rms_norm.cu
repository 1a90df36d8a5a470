// RMSNorm and fused residual-add + RMSNorm over rows of length `hidden`:
//   rms_norm:            out = w * (x / sqrt(mean(x^2) + eps))        (math in fp32)
//   fused_add_rms_norm:  residual += x (stored in T); out = rms_norm(residual)
// One CUDA block per row. Each thread keeps VPT vectors of VEC elements in
// registers, so the row is read from DRAM once and written once.
#include <algorithm>
#include <cstdlib>

#include "kernels/csrc/common.cuh"
#include "kernels/csrc/ops.h"

namespace lab {
namespace {

// Sum over the threads of one row (threadIdx.y) of the block; all threads get it.
__device__ __forceinline__ float row_sum(float value, float (*scratch)[32]) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int n_warps = (blockDim.x + 31) >> 5;
  if (lane == 0) scratch[threadIdx.y][warp] = value;
  __syncthreads();
  value = lane < n_warps ? scratch[threadIdx.y][lane] : 0.f;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// blockDim = (threads per row, rows per block); blockDim.y <= kMaxRowsPerBlock.
constexpr int kMaxRowsPerBlock = 4;

template <typename T, int VEC, int VPT, bool kFusedAdd>
__global__ void __launch_bounds__(1024) rms_norm_kernel(T* __restrict__ out, T* __restrict__ residual,
                                                       const T* __restrict__ x, const T* __restrict__ weight,
                                                       int64_t rows, int hidden, float eps) {
  using V = Vec<T, VEC>;
  __shared__ float scratch[kMaxRowsPerBlock][32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  // Rows past the end still take part in the block's barrier, with nothing to load.
  const int n_vec = row < rows ? hidden / VEC : 0;
  const V* xr = reinterpret_cast<const V*>(x + row * hidden);
  V* rr = reinterpret_cast<V*>(residual + row * hidden);
  V* outr = reinterpret_cast<V*>(out + row * hidden);
  const V* wr = reinterpret_cast<const V*>(weight);

  float vals[VPT][VEC];
  float sumsq = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < n_vec) {
      V v = xr[idx];
      if constexpr (kFusedAdd) {
        V r = rr[idx];
#pragma unroll
        for (int j = 0; j < VEC; ++j) r.v[j] = from_float<T>(to_float(r.v[j]) + to_float(v.v[j]));
        rr[idx] = r;
        v = r;
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        vals[i][j] = to_float(v.v[j]);
        sumsq += vals[i][j] * vals[i][j];
      }
    }
  }
  const float rstd = rsqrtf(row_sum(sumsq, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int idx = threadIdx.x + i * blockDim.x;
    if (idx < n_vec) {
      const V w = wr[idx];
      V o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        // Round the normalised value to T before the weight, as the reference does.
        o.v[j] = from_float<T>(to_float(w.v[j]) * to_float(from_float<T>(vals[i][j] * rstd)));
      }
      outr[idx] = o;
    }
  }
}

template <typename T, int VEC, bool kFusedAdd>
cudaError_t launch_vec(T* out, T* residual, const T* x, const T* w, int64_t rows, int hidden, float eps,
                       cudaStream_t stream) {
  const int n_vec = hidden / VEC;
  // Aim for kThreads threads with a few vectors each (memory-level parallelism);
  // wider rows take more vectors per thread, up to 16, then more threads.
  // LAB_RMS_THREADS overrides the target (tuning experiments only).
  static const int kThreads = [] {
    const char* env = std::getenv("LAB_RMS_THREADS");
    return env ? std::max(32, std::min(1024, std::atoi(env))) : 256;
  }();
  int threads = std::min(kThreads, ((n_vec + 31) / 32) * 32);
  int vpt = (n_vec + threads - 1) / threads;
  if (vpt > 16) {
    threads = std::min(1024, ((n_vec + 15) / 16 + 31) / 32 * 32);
    vpt = (n_vec + threads - 1) / threads;
  }
  if (vpt > 32) return cudaErrorInvalidValue;  // > 32K vectors per row: not supported
  // Narrow rows share a block (LAB_RMS_ROWS rows of `threads` each, at most 1024 threads).
  static const int kRowsTarget = [] {
    const char* env = std::getenv("LAB_RMS_ROWS");
    return env ? std::max(1, std::min(kMaxRowsPerBlock, std::atoi(env))) : 1;
  }();
  int rows_per_block = 1;
  while (rows_per_block * 2 <= kRowsTarget && threads * rows_per_block * 2 <= 1024) rows_per_block *= 2;
  const dim3 block(threads, rows_per_block);
  const dim3 grid(static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block));
#define LAB_LAUNCH(N) \
  rms_norm_kernel<T, VEC, N, kFusedAdd><<<grid, block, 0, stream>>>(out, residual, x, w, rows, hidden, eps)
  if (vpt <= 1) LAB_LAUNCH(1);
  else if (vpt <= 2) LAB_LAUNCH(2);
  else if (vpt <= 4) LAB_LAUNCH(4);
  else if (vpt <= 8) LAB_LAUNCH(8);
  else if (vpt <= 16) LAB_LAUNCH(16);
  else LAB_LAUNCH(32);
#undef LAB_LAUNCH
  return cudaGetLastError();
}

template <typename T, bool kFusedAdd>
cudaError_t launch(void* out, void* residual, const void* x, const void* w, int64_t rows, int hidden, float eps,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  constexpr int kVec = 16 / sizeof(T);
  auto* o = static_cast<T*>(out);
  auto* r = static_cast<T*>(residual);
  auto* xi = static_cast<const T*>(x);
  auto* wi = static_cast<const T*>(w);
  const bool can_vec = hidden % kVec == 0 && aligned16(out) && aligned16(x) && aligned16(w) &&
                       (!kFusedAdd || aligned16(residual));
  if (can_vec) return launch_vec<T, kVec, kFusedAdd>(o, r, xi, wi, rows, hidden, eps, stream);
  return launch_vec<T, 1, kFusedAdd>(o, r, xi, wi, rows, hidden, eps, stream);
}

template <bool kFusedAdd>
cudaError_t dispatch(void* out, void* residual, const void* x, const void* w, int64_t rows, int hidden, float eps,
                     DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return launch<float, kFusedAdd>(out, residual, x, w, rows, hidden, eps, stream);
    case DType::kFloat16: return launch<__half, kFusedAdd>(out, residual, x, w, rows, hidden, eps, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16, kFusedAdd>(out, residual, x, w, rows, hidden, eps, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t rms_norm(void* out, const void* x, const void* weight, int64_t rows, int hidden, float eps, DType dtype,
                     cudaStream_t stream) {
  return dispatch<false>(out, nullptr, x, weight, rows, hidden, eps, dtype, stream);
}

cudaError_t fused_add_rms_norm(void* out, void* residual, const void* x, const void* weight, int64_t rows,
                               int hidden, float eps, DType dtype, cudaStream_t stream) {
  return dispatch<true>(out, residual, x, weight, rows, hidden, eps, dtype, stream);
}

}  // namespace lab
