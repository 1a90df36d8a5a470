"""Shared setup of the FlashAttention tests: where they run, tolerances, inputs, the check.

Tolerance: each output element must satisfy |got - ref| <= atol + rtol * |ref| against the
fp32 reference (parity.tolerance), for unit-normal q, k, v. An output is a convex combination
of V rows; the kernels accumulate in fp32, round P to the input dtype before P @ V (an
absolute error ~u * sum_j p_j |v_j|: the atol) and round O once (relative: the rtol).
u = 2^-8 (bf16), 2^-11 (fp16).

  dtype     rtol          atol     measured atol needed at rtol = 4u (worst case)
  bfloat16  1.6e-2 (4u)   8e-3     3.4e-3 (flash_attention, Triton interpreter)
  float16   2e-3   (4u)   5e-4     2.2e-4

Measured on the CPU through Triton's interpreter (2026-11-26) over test_matches_reference's
32 cases; the interpreter truncates fp32 -> bf16 (one ulp = 2u per rounding) where the GPU
rounds to nearest (u), so the compiled kernels, with the same rounding points, sit further
inside the bound. The worst element of all interpreted flash-attention and flash-decode cases
used 0.64 of its bound, of parity/test_paged_flash.py's 0.69. A zeroed or skipped output
element (|ref| ~ 0.1-1) misses by 10x or more; before this bound, a max-abs 2e-2 hid any
element with |ref| < 2e-2.
"""

import pytest
import torch

from kernels import flash_attention as fa
from kernels._triton import interpreting
from kernels.attention_ref import attention_ref
from parity.tolerance import Tol, assert_close

INTERPRET = interpreting()
ON_GPU = torch.cuda.is_available() and not INTERPRET
needs_backend = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                   reason="needs a CUDA GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if ON_GPU else "cpu"
TOL = {torch.bfloat16: Tol(atol=8e-3, rtol=1.6e-2), torch.float16: Tol(atol=5e-4, rtol=2e-3)}
gpu_only = pytest.mark.skipif(not ON_GPU, reason="large shapes: CUDA GPU only (not the interpreter)")


def randn(*shape, dtype, seed):
    """Unit-normal tensor on DEVICE, generated on the CPU for reproducibility."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def check_attention(got: torch.Tensor, want: torch.Tensor, dtype, what: str = "attention"):
    """Asserts every element of a kernel's output is within TOL[dtype] of the fp32 reference."""
    return assert_close(got, want, TOL[dtype], f"{what} {dtype}")


def qkv(B, Hq, Hkv, S_q, S_kv, D, dtype, seed=0):
    """Seeded unit-normal q (B, Hq, S_q, D), k and v (B, Hkv, S_kv, D)."""
    return (randn(B, Hq, S_q, D, dtype=dtype, seed=seed), randn(B, Hkv, S_kv, D, dtype=dtype, seed=seed + 1),
            randn(B, Hkv, S_kv, D, dtype=dtype, seed=seed + 2))


def poisoned_like(t):
    """NaN with t's shape and strides: any row a kernel skips stays NaN."""
    return torch.full_like(t, float("nan"))


def check_flash_attention(dtype, causal: bool, heads: tuple[int, int], D: int, S: int):
    """Asserts flash_attention writes, in place, the fp32 reference's output within TOL[dtype]."""
    Hq, Hkv = heads
    q, k, v = qkv(1, Hq, Hkv, S, S, D, dtype, seed=S + D)
    want = attention_ref(q.float(), k.float(), v.float(), causal)
    out = poisoned_like(q)
    got = fa.flash_attention(q, k, v, causal, out=out)
    assert got.data_ptr() == out.data_ptr(), "flash_attention did not write into out="
    return check_attention(got, want, dtype, f"flash_attention causal={causal} heads={heads} D={D} S={S}")
