"""Shared setup of the FlashAttention tests: where they run, tolerances, inputs.

Tolerances are max absolute error of the kernel's bf16/fp16 output against the
fp32 reference for unit-normal inputs: bf16 keeps 8 mantissa bits (~4e-3 relative
per rounding, several roundings of P and the output), fp16 keeps 11.
"""

import pytest
import torch

from kernels._triton import interpreting

INTERPRET = interpreting()
ON_GPU = torch.cuda.is_available() and not INTERPRET
needs_backend = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                   reason="needs a CUDA GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
gpu_only = pytest.mark.skipif(not ON_GPU, reason="large shapes: CUDA GPU only (not the interpreter)")


def randn(*shape, dtype, seed):
    """Unit-normal tensor on DEVICE, generated on the CPU for reproducibility."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)
