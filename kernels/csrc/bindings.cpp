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
        if (dtype < 0 || dtype > 2) throw std::invalid_argument("vector_add: dtype code must be 0, 1 or 2");
        check(lab::vector_add(reinterpret_cast<void*>(out), reinterpret_cast<const void*>(x),
                              reinterpret_cast<const void*>(y), n, alpha, static_cast<lab::DType>(dtype),
                              reinterpret_cast<cudaStream_t>(stream)),
              "vector_add");
      },
      py::arg("out"), py::arg("x"), py::arg("y"), py::arg("n"), py::arg("alpha"), py::arg("dtype"),
      py::arg("stream"), "out = x + alpha * y over n elements (device pointers as ints).");
}
