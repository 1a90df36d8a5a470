"""The fused MoE Triton kernel against the per-expert loop (tolerances: parity/moe_cases.py).

On the CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set by the CPU
target) at tiny sizes; the GPU target (gpu = True) adds the Mixtral-8x7B layer shape.
"""

import pytest
import torch

from kernels import _triton
from parity.moe_cases import check_fused_moe

pytestmark = pytest.mark.skipif(_triton.run_device() is None, reason="needs a GPU or TRITON_INTERPRET=1")
ON_GPU = _triton.run_device() == "cuda"


# (tokens, experts, hidden, intermediate, top_k): uneven sizes, an expert with no token (1 token),
# more picks than a block.
TINY = [(1, 4, 64, 96, 2), (37, 4, 64, 96, 2), (19, 8, 48, 80, 2)]
GPU = [(1, 8, 4096, 14336, 2), (77, 8, 4096, 14336, 2), (512, 8, 4096, 14336, 2)]


@pytest.mark.parametrize("shape", TINY + (GPU if ON_GPU else []), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fused_moe_matches_loop(shape, dtype):
    if not ON_GPU and dtype != torch.float32 and shape != TINY[1]:
        pytest.skip("the interpreter is slow: half precision at one tiny shape")
    if ON_GPU and dtype == torch.float32 and shape in GPU:
        pytest.skip("fp32 at the Mixtral shape: the tiny shapes cover fp32")
    got, loop = check_fused_moe(*shape, dtype, _triton.run_device())
    print(f"{shape} {dtype}: kernel max abs err {got:.3g}, loop {loop:.3g}")
