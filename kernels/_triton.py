"""Whether Triton kernels can run for a tensor (GPU, or CPU under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_run(t: torch.Tensor) -> bool:
    """True if a Triton kernel can take `t`: CUDA tensors, or CPU tensors when interpreting."""
    return HAVE_TRITON and (t.is_cuda or (interpreting() and t.device.type == "cpu"))


def run_device():
    """Where Triton kernels run on this machine: "cuda", "cpu" under TRITON_INTERPRET=1, else None."""
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if HAVE_TRITON and interpreting() else None
