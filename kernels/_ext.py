"""Loads the CUDA extension `kernels._C`: the Bazel-built module, else the fallback build."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch

# Must match lab::DType in csrc/ops.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_module: ModuleType | None = None
_error: Exception | None = None


def load() -> ModuleType:
    """Returns the extension module, building it with nvcc when Bazel did not.

    Set LAB_NO_JIT_BUILD=1 to forbid the fallback build. Raises ImportError with
    the reason when the extension cannot be had.
    """
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise ImportError(str(_error)) from _error
    try:
        from kernels import _C  # built by Bazel (//kernels:_C.so)

        _module = _C
        return _module
    except ImportError as bazel_error:
        if os.environ.get("LAB_NO_JIT_BUILD") == "1":
            _error = bazel_error
            raise
    try:
        from kernels import _build

        path = _build.build()
        spec = importlib.util.spec_from_file_location("kernels._C", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["kernels._C"] = module
        _module = module
        return module
    except Exception as e:  # noqa: BLE001 - remembered and re-raised as ImportError
        _error = e
        raise ImportError(f"kernels._C unavailable: {e}") from e


def dtype_code(dtype) -> int:
    """Maps a torch dtype to the extension's dtype code, or raises TypeError."""
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"CUDA kernels support float32, float16 and bfloat16, got {dtype}") from None


def launch(t: torch.Tensor, fn) -> None:
    """Calls fn(raw_stream) with t's device current and its current CUDA stream.

    Cheap on the hot path (no Stream object; a device guard only when t is not on the
    current device): decode-sized launches are dominated by host overhead.
    """
    index = t.device.index
    if index is None or index == torch.cuda.current_device():
        fn(torch._C._cuda_getCurrentRawStream(torch.cuda.current_device() if index is None else index))
        return
    with torch.cuda.device(index):
        fn(torch._C._cuda_getCurrentRawStream(index))
