"""The fused MoE Triton kernel against the per-expert loop (tolerances: parity/moe_cases.py).

On the CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set by the CPU
target) at tiny sizes; the GPU target (gpu = True) adds the Mixtral-8x7B layer shape.
"""

import pytest
import torch

from kernels import _triton, fused_moe
from model.moe import moe_reference
from parity.moe_cases import TOLERANCE, check_fused_moe, moe_inputs
from parity.tolerance import assert_close

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


_ALL_CONFIGS = sorted({c for cands in fused_moe.CONFIGS.values() for c in cands})


@pytest.mark.parametrize("conf", _ALL_CONFIGS, ids=lambda c: "m{}n{}k{}g{}w{}s{}".format(*c))
def test_every_config_matches_loop(conf):
    """Each tile config of the token-bucket table (block sizes, GROUP_M swizzle; stages and warps
    matter only when compiled) against the fp64 loop within TOLERANCE: 150 tokens, so the largest
    BLOCK_M (128) still gives several blocks per expert and a trailing run of unused ones. fp32
    under the interpreter (tight); bf16 on the GPU, the dtype the table is for (fp32 tiles at these
    stage counts would not fit shared memory; config_for filters them)."""
    device = _triton.run_device()
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    x, w13, w2, weights, ids = moe_inputs(150, 4, 64, 160, 2, dtype, device, seed=3)
    ref = moe_reference(x.double(), w13.double(), w2.double(), weights.double(), ids)
    assert_close(fused_moe._run(x, w13, w2, weights, ids, conf), ref, TOLERANCE[dtype], f"config {conf} {dtype}")


def test_align_leaves_no_host_sync_shape():
    """align_by_expert sizes by the worst case: every slot once, trailing blocks marked -1."""
    ids = torch.tensor([[0, 2], [2, 0], [2, 1]])
    slots, experts = fused_moe.align_by_expert(ids, 4, 4)
    assert slots.numel() == experts.numel() * 4 == (2 + 4) * 4
    assert experts.tolist() == [0, 1, 2, -1, -1, -1]
    assert sorted(s for s in slots.tolist() if s < 6) == list(range(6))


def test_token_bucket():
    assert [fused_moe.token_bucket(n) for n in (1, 2, 3, 4, 5, 16, 17, 64, 100, 128, 200, 512, 4096)] == \
        [1, 1, 4, 4, 4, 16, 16, 64, 128, 128, 256, 512, 512]
