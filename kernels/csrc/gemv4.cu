// W4A16 g128 GEMV for 1..8 tokens on the tensor cores (mma.sync m16n8k16, fp32 accumulation).
//
//   y[m, n] = sum_k x[m, k] * s[n, g] * (q[n, k] - z[n, g]),  g = k / 128
//
// Operands (kernels/quant_gemv.py's GEMV layout, pack_w4_gemv): qw int32 (N, K / 8), row n's words in
// K order, each 128-code group one 16-word unit; word u = 4 t + p of a group holds the 8 inputs
// k = 128 g + 32 p + 8 t + o (o = 0..7), input o at bits 4 sigma(o), sigma(2i) = i, sigma(2i + 1) = i + 4.
// s, z (N, K / 128) fp16 or bf16 (z: the integer zero points). x (M, K), y (M, N) bf16 or fp16.
//
// Why this layout: in m16n8k16 a lane (group gid = lane / 4, t = lane % 4) holds A's k columns
// {2t, 2t+1, 2t+8, 2t+9} and B's k rows {2t, 2t+1, 2t+8, 2t+9} of each k16 step. Any one-to-one
// map of (lane t, step, slot) to the group's 128 inputs gives the same sum if A and B use the same one.
// Here lane t's steps 2p, 2p+1 take inputs 32 p + 8 t + 0..7: for a row that is word 4 t + p (the
// lane's 4 words of a group are one 16-byte load), and for x one 16-byte load of 8 contiguous inputs
// (the B fragments of both steps, as they lie in memory). Pair i of a word (inputs 2i, 2i+1) sits at
// bits 4i and 4i + 16, so one LOP3 with 0x000F000F makes it a packed pair of 16-bit floats
// (MAGIC + q_2i, MAGIC + q_2i+1): MAGIC = 128 in bf16 (0x4300), 1024 in fp16 (0x6400), exact.
// A is the weight tile (16 rows n), B the tokens (8 columns: token gid; M < 8 repeats the last token,
// those columns are never stored). The offset is not subtracted per weight: the group's sum is
//   S = sum (MAGIC + q) x  ->  sum (q - z) x = S - (MAGIC + z) X_g,  X_g = sum over the group of x,
// and X_g comes from the tensor cores too (one more mma per k16 step with A = all ones, shared by the
// warp's row tiles), in the C fragment's layout. Per 8 weights: 3 shifts, 4 LOP3, one mma; per group,
// row and token: 2 FFMA (offset and zero point, then the fp32 group scale). Error: fp32 rounding of S
// (|S| <= (MAGIC + 15) sum |x|): ~1e-5 relative (bf16), ~1e-4 (fp16) of a group's sum; the weights are exact.
//
// Work split: a CTA owns R tiles of 16 rows; its WARPS warps split the K groups (warp w takes groups
// [(i WARPS + w) U, +U) for i = 0, 1, ...: the CTA streams WARPS x U consecutive groups of each row at a
// time); each warp keeps its fp32 partials in registers, and they meet once at the end in shared memory
// (no split-K atomics, no second kernel). The weight words of the next U groups are loaded (16 bytes a
// lane per row, L1 bypassed, 256-byte L2 prefetch) before the current ones are used (register double
// buffering: 2 R x 2 x U 16-byte loads in flight per lane).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/csrc/common.cuh"
#include "kernels/csrc/ops.h"

namespace lab {
namespace {

template <typename T> struct W4Traits;
template <> struct W4Traits<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // (128, 128) in bf16
  static constexpr float kMagicF = 128.f;
  static constexpr uint32_t kOnes = 0x3F803F80u;  // (1, 1)
};
template <> struct W4Traits<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // (1024, 1024) in fp16
  static constexpr float kMagicF = 1024.f;
  static constexpr uint32_t kOnes = 0x3C003C00u;
};

__device__ __forceinline__ uint32_t lop3_pair(uint32_t w, uint32_t magic) {
  // (w & 0x000F000F) | magic: one LOP3 (immediate lut 0xEA = (a & b) | c)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "n"(0x000F000F), "r"(magic));
  return r;
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int p) {
  return p == 0 ? v.x : p == 1 ? v.y : p == 2 ? v.z : v.w;
}

template <typename TS> __device__ __forceinline__ float sfloat(TS v) { return to_float(v); }

// One CTA: R tiles of 16 rows, WARPS warps splitting the groups, U groups per step.
template <typename T, typename TS, int R, int WARPS, int U>
__global__ void __launch_bounds__(WARPS * 32)
    w4_gemv_mma_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qw, const TS* __restrict__ s,
                       const TS* __restrict__ z, T* __restrict__ y, int M, int N, int K) {
  using Tr = W4Traits<T>;
  using SV = Vec<TS, U>;  // U scales of a row, one aligned load
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gid = lane >> 2, t = lane & 3;
  const int G = K >> 7, KW = K >> 3;
  const int n0 = blockIdx.x * (16 * R);
  const int mt = gid < M ? gid : M - 1;  // B column gid: token gid (the last token repeated past M)
  const T* xr = x + static_cast<int64_t>(mt) * K + 8 * t;

  // the lane's two rows of each tile: n0 + 16 r + gid (+ 8)
  const uint32_t* wrow[R][2];
  const TS* srow[R][2];
  const TS* zrow[R][2];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + 16 * r + gid + 8 * h;
      wrow[r][h] = qw + n * KW + 4 * t;
      srow[r][h] = s + n * G;
      zrow[r][h] = z + n * G;
    }
  }
  float acc[R][4];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
  }

  uint4 wcur[R][2][U], wnxt[R][2][U];
  SV scur[R][2], zcur[R][2], snxt[R][2], znxt[R][2];
  auto load = [&](int gb, uint4 (&w)[R][2][U], SV (&sv)[R][2], SV (&zv)[R][2]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int u = 0; u < U; ++u) w[r][h][u] = ld_stream(wrow[r][h] + 16 * (gb + u));
        sv[r][h] = *reinterpret_cast<const SV*>(srow[r][h] + gb);
        zv[r][h] = *reinterpret_cast<const SV*>(zrow[r][h] + gb);
      }
    }
  };

  const int stride = WARPS * U;
  int gb = warp * U;
  if (gb < G) load(gb, wcur, scur, zcur);
  for (; gb < G; gb += stride) {
    if (gb + stride < G) load(gb + stride, wnxt, snxt, znxt);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = gb + u;
      uint4 xf[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) xf[p] = __ldg(reinterpret_cast<const uint4*>(xr + 128 * g + 32 * p));
      float cx[4] = {0.f, 0.f, 0.f, 0.f};  // X_g of tokens 2t, 2t+1 (rows alike)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        mma16816<T>(cx, Tr::kOnes, Tr::kOnes, Tr::kOnes, Tr::kOnes, xf[p].x, xf[p].y);
        mma16816<T>(cx, Tr::kOnes, Tr::kOnes, Tr::kOnes, Tr::kOnes, xf[p].z, xf[p].w);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float cs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const uint32_t w0 = word(wcur[r][0][u], p), w1 = word(wcur[r][1][u], p);
          // step 2p: pairs 0 and 1 of the words; step 2p + 1: pairs 2 and 3
          mma16816<T>(cs, lop3_pair(w0, Tr::kMagic), lop3_pair(w1, Tr::kMagic), lop3_pair(w0 >> 4, Tr::kMagic),
                      lop3_pair(w1 >> 4, Tr::kMagic), xf[p].x, xf[p].y);
          mma16816<T>(cs, lop3_pair(w0 >> 8, Tr::kMagic), lop3_pair(w1 >> 8, Tr::kMagic),
                      lop3_pair(w0 >> 12, Tr::kMagic), lop3_pair(w1 >> 12, Tr::kMagic), xf[p].z, xf[p].w);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float sc = sfloat(scur[r][h].v[u]);
          const float mz = Tr::kMagicF + sfloat(zcur[r][h].v[u]);
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int i = 2 * h + c;
            acc[r][i] = fmaf(sc, fmaf(-mz, cx[i], cs[i]), acc[r][i]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int u = 0; u < U; ++u) wcur[r][h][u] = wnxt[r][h][u];
        scur[r][h] = snxt[r][h];
        zcur[r][h] = znxt[r][h];
      }
    }
  }

  // the warps' partials meet in shared memory; warp 0 adds them and stores
  if constexpr (WARPS > 1) {
    __shared__ float red[WARPS - 1][R][4][32];
    if (warp > 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) red[warp - 1][r][c][lane] = acc[r][c];
      }
    }
    __syncthreads();
    if (warp > 0) return;
#pragma unroll
    for (int w = 0; w < WARPS - 1; ++w) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] += red[w][r][c][lane];
      }
    }
  }
  // C fragment: c0, c1 = (row gid, tokens 2t, 2t + 1), c2, c3 = (row gid + 8, same tokens)
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int m = 2 * t + (c & 1);
      const int n = n0 + 16 * r + gid + 8 * (c >> 1);
      if (m < M) y[static_cast<int64_t>(m) * N + n] = from_float<T>(acc[r][c]);
    }
  }
}

// The config set: (R tiles of 16 rows, WARPS warps over K, U groups a step). Keep in sync with
// kernels/quant_gemv.py's MMA_CONFIGS (the index is the config id).
#define LAB_W4_MMA_CONFIGS(X) \
  X(0, 1, 4, 4)               \
  X(1, 1, 4, 2)               \
  X(2, 1, 8, 2)               \
  X(3, 1, 8, 4)               \
  X(4, 2, 4, 2)               \
  X(5, 1, 16, 1)              \
  X(6, 1, 2, 4)               \
  X(7, 2, 8, 2)

template <typename T, typename TS, int R, int WARPS, int U>
cudaError_t launch_cfg(const void* x, const void* qw, const void* s, const void* z, void* y, int M, int N, int K,
                       cudaStream_t stream) {
  const int G = K / 128;
  if (N % (16 * R) != 0 || G % U != 0) return cudaErrorInvalidValue;
  w4_gemv_mma_kernel<T, TS, R, WARPS, U><<<N / (16 * R), WARPS * 32, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const uint32_t*>(qw), static_cast<const TS*>(s),
      static_cast<const TS*>(z), static_cast<T*>(y), M, N, K);
  return cudaGetLastError();
}

template <typename T, typename TS>
cudaError_t dispatch(int config, const void* x, const void* qw, const void* s, const void* z, void* y, int M, int N,
                     int K, cudaStream_t stream) {
  switch (config) {
#define LAB_W4_CASE(ID, R, WARPS, U) \
  case ID:                           \
    return launch_cfg<T, TS, R, WARPS, U>(x, qw, s, z, y, M, N, K, stream);
    LAB_W4_MMA_CONFIGS(LAB_W4_CASE)
#undef LAB_W4_CASE
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t w4a16_gemv_mma(void* y, const void* x, const void* qw, const void* scales, const void* zeros, int M,
                           int N, int K, DType dtype, DType scale_dtype, int config, cudaStream_t stream) {
  if (M < 1 || M > 8 || K % 128 != 0 || N <= 0) return cudaErrorInvalidValue;
  if (!aligned16(x) || !aligned16(qw) || (K * 2) % 16 != 0) return cudaErrorInvalidValue;
  const bool s_bf16 = scale_dtype == DType::kBFloat16;
  if (!s_bf16 && scale_dtype != DType::kFloat16) return cudaErrorInvalidValue;
  if (dtype == DType::kBFloat16) {
    return s_bf16 ? dispatch<__nv_bfloat16, __nv_bfloat16>(config, x, qw, scales, zeros, y, M, N, K, stream)
                  : dispatch<__nv_bfloat16, __half>(config, x, qw, scales, zeros, y, M, N, K, stream);
  }
  if (dtype == DType::kFloat16 && !s_bf16) {  // fp16 activations take fp16 scales (kernels/gemv4.py: MMA_DTYPES)
    return dispatch<__half, __half>(config, x, qw, scales, zeros, y, M, N, K, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lab
