// pybind11 module `kernels._C`: thin bindings over the launchers in ops.h.
// Pointers and streams cross as Python ints; no libtorch is linked.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/csrc/ops.h"

namespace py = pybind11;

namespace {

// Raises a clear Python RuntimeError when no usable GPU/driver is present.
void ensure_cuda() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky error for later calls
    throw std::runtime_error(std::string("kernels._C: CUDA is not available on this machine (") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "no GPU found") +
                             "); use the Triton or PyTorch backend instead");
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("kernels._C.") + what + ": " + cudaGetErrorString(err));
  }
}

lab::DType to_dtype(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  return static_cast<lab::DType>(code);
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "The lab's CUDA kernels (raw pointers in, no libtorch).";
  m.def("device_count", &device_count, "Number of CUDA devices the runtime sees (0 without a driver).");
  m.def(
      "vector_add",
      [](std::uintptr_t out, std::uintptr_t x, std::uintptr_t y, std::int64_t n, float alpha, int dtype,
         std::uintptr_t stream) {
        ensure_cuda();
        check(lab::vector_add(reinterpret_cast<void*>(out), reinterpret_cast<const void*>(x),
                              reinterpret_cast<const void*>(y), n, alpha, to_dtype(dtype),
                              reinterpret_cast<cudaStream_t>(stream)),
              "vector_add");
      },
      py::arg("out"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("alpha"), py::arg("dtype"),
      py::arg("stream"), "out = x + alpha * y over n elements (device pointers as ints).");
  m.def(
      "rms_norm",
      [](std::uintptr_t out, std::uintptr_t x, std::uintptr_t w, std::int64_t rows, int hidden, float eps, int dtype,
         std::uintptr_t stream) {
        ensure_cuda();
        check(lab::rms_norm(reinterpret_cast<void*>(out), reinterpret_cast<const void*>(x),
                            reinterpret_cast<const void*>(w), rows, hidden, eps, to_dtype(dtype),
                            reinterpret_cast<cudaStream_t>(stream)),
              "rms_norm");
      },
      py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("rows"), py::arg("hidden"), py::arg("eps"),
      py::arg("dtype"), py::arg("stream"), "RMSNorm over contiguous rows (device pointers as ints).");
  m.def(
      "fused_add_rms_norm",
      [](std::uintptr_t out, std::uintptr_t residual, std::uintptr_t x, std::uintptr_t w, std::int64_t rows,
         int hidden, float eps, int dtype, std::uintptr_t stream) {
        ensure_cuda();
        check(lab::fused_add_rms_norm(reinterpret_cast<void*>(out), reinterpret_cast<void*>(residual),
                                      reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(w), rows,
                                      hidden, eps, to_dtype(dtype), reinterpret_cast<cudaStream_t>(stream)),
              "fused_add_rms_norm");
      },
      py::arg("out"), py::arg("residual"), py::arg("x"), py::arg("weight"), py::arg("rows"), py::arg("hidden"),
      py::arg("eps"), py::arg("dtype"), py::arg("stream"), "residual += x; out = RMSNorm(residual).");
  m.def(
      "silu_and_mul",
      [](std::uintptr_t out, std::uintptr_t in, std::int64_t rows, int inter, int dtype, std::uintptr_t stream) {
        ensure_cuda();
        check(lab::silu_and_mul(reinterpret_cast<void*>(out), reinterpret_cast<const void*>(in), rows, inter,
                                to_dtype(dtype), reinterpret_cast<cudaStream_t>(stream)),
              "silu_and_mul");
      },
      py::arg("out"), py::arg("input"), py::arg("rows"), py::arg("inter"), py::arg("dtype"), py::arg("stream"),
      "out = silu(gate) * up for input rows [gate | up].");
  m.def(
      "w4a16_gemv_mma",
      [](std::uintptr_t y, std::uintptr_t x, std::uintptr_t qw, std::uintptr_t scales, std::uintptr_t zeros, int M,
         int N, int K, int dtype, int scale_dtype, int config, std::uintptr_t stream) {
        ensure_cuda();
        check(lab::w4a16_gemv_mma(reinterpret_cast<void*>(y), reinterpret_cast<const void*>(x),
                                  reinterpret_cast<const void*>(qw), reinterpret_cast<const void*>(scales),
                                  reinterpret_cast<const void*>(zeros), M, N, K, to_dtype(dtype),
                                  to_dtype(scale_dtype), config, reinterpret_cast<cudaStream_t>(stream)),
              "w4a16_gemv_mma");
      },
      py::arg("y"), py::arg("x"), py::arg("qw"), py::arg("scales"), py::arg("zeros"), py::arg("M"), py::arg("N"),
      py::arg("K"), py::arg("dtype"), py::arg("scale_dtype"), py::arg("config"), py::arg("stream"),
      "W4A16 g128 GEMV, 1..8 tokens, tensor cores (kernels/csrc/gemv4.cu).");
}
