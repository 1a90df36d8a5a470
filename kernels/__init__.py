"""The ops the model calls: CUDA (pybind11 extension), Triton and PyTorch faces."""
