"""GPU parity for vector_add (tagged requires-gpu; skips without a GPU)."""

import pytest
import torch

from kernels.vector_add import vector_add_cuda, vector_add_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Tolerances: one fused multiply-add in fp32, rounded once to the output dtype.
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("n", [1, 111, 4096, 1_000_003])
def test_vector_add_matches_reference(dtype, n):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(n, device="cuda", generator=g).to(dtype)
    y = torch.randn(n, device="cuda", generator=g).to(dtype)
    got = vector_add_cuda(x, y, alpha=0.5)
    want = vector_add_reference(x, y, alpha=0.5)
    assert want.abs().max() > 0
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err <= TOL[dtype], f"rel err {err} > {TOL[dtype]} for {dtype} n={n}"
