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

}  // namespace lab
