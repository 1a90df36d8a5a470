"""W4A16 / W8A16 Triton matmuls against their dequantized fp32 references (GPU, or TRITON_INTERPRET=1)."""

import pytest
import torch

from kernels._triton import run_device
from parity.tolerance import Tol, assert_close, compare

DEVICE = run_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a GPU or TRITON_INTERPRET=1")

# The kernel dequantizes into x's dtype before tl.dot (fp32 accumulation): bf16 rounds each weight
# and the output to 8 mantissa bits (2^-8 relative), fp16 to 11; the bounds are a few such steps.
# fp32 (the CPU interpreter) passes at 1e-4. A wrong nibble order or group index gives errors the
# size of the weights, far outside: test_planted_nibble_swap_fails shows the check catches one.
TOL = {torch.bfloat16: Tol(atol=2e-2, rtol=2e-2), torch.float16: Tol(atol=5e-3, rtol=5e-3),
       torch.float32: Tol(atol=1e-4, rtol=1e-4)}
DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]  # numpy has no bf16


def case(M, N, K, gs, dtype, seed=0):
    from kernels.quant_matmul import pack_w4

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g)
    scales = (torch.rand(K // gs, N, generator=g) * 0.02 + 0.005)
    zeros = torch.randint(0, 16, (K // gs, N), generator=g).float()
    x = torch.randn(M, K, generator=g)
    dev = DEVICE
    return (x.to(dev, dtype), q.to(dev), scales.to(dev, dtype), zeros.to(dev, dtype), pack_w4(q).to(dev))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K,gs", [(1, 64, 256, 128), (7, 96, 256, 64), (19, 200, 384, 128)])
def test_w4a16_matches_reference(M, N, K, gs, dtype):
    from kernels.quant_matmul import w4a16_matmul, w4a16_reference

    x, q, s, z, qw = case(M, N, K, gs, dtype)
    ref = w4a16_reference(x, q, s, z, gs)
    assert_close(w4a16_matmul(x, qw, s, z, gs).float(), ref, TOL[dtype], "w4a16")


def test_planted_nibble_swap_fails():
    from kernels.quant_matmul import w4a16_matmul, w4a16_reference

    dtype = DTYPES[0]
    x, q, s, z, qw = case(3, 64, 256, 128, dtype, seed=1)
    ref = w4a16_reference(x, q.view(64, 32, 8).flip(-1).reshape(64, 256), s, z, 128)  # reversed nibbles
    from parity.tolerance import compare
    assert not compare(w4a16_matmul(x, qw, s, z, 128).float(), ref, TOL[dtype]).ok


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", [(1, 64, 128), (9, 100, 192)])
def test_w8a16_matches_reference(M, N, K, dtype):
    from kernels.quant_matmul import w8a16_matmul, w8a16_reference

    g = torch.Generator().manual_seed(M)
    w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    scale = (torch.rand(N, generator=g) * 0.01 + 1e-3).to(DEVICE, dtype)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    assert_close(w8a16_matmul(x, w, scale).float(), w8a16_reference(x, w, scale), TOL[dtype], "w8a16")


def test_planted_wrong_group_fails_prefill_tiles():
    """The prefill tiles (M > 16) loading one scale / zero row per tile (group 128 = BLOCK_K): the
    neighbouring group's row (an off-by-one group index) must fail the check."""
    from kernels.quant_matmul import w4a16_matmul, w4a16_reference

    dtype = DTYPES[0]
    x, q, s, z, qw = case(19, 64, 512, 128, dtype)
    ref = w4a16_reference(x, q, s, z, 128)
    assert compare(w4a16_matmul(x, qw, s, z, 128).float(), ref, TOL[dtype]).ok
    assert not compare(w4a16_matmul(x, qw, s.roll(1, 0), z.roll(1, 0), 128).float(), ref, TOL[dtype]).ok
