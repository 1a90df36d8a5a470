"""The flash face of paged attention (decodes through paged flash decode, prefills through
varlen flash attention, one launch each) against the gather face, on a mixed step.

Runs wherever Triton can: the GPU, or the CPU through Triton's interpreter (CI sets
TRITON_INTERPRET=1 for this test). fp16 and bf16 inputs; the gather face runs on their fp32
copies, so the flash face meets the attention kernels' per-element bound against an fp32
reference (kernels/tests/attention_cases.py). Random K/V with outliers, caches poisoned
outside the written slots so a wrong slot shows.
"""

import pytest
import torch

from kernels import _triton
from cache import build_metadata
from kernels.tests.attention_cases import check_attention
from model.paged_attention import FlashFace, flash_paged_attention, gather_paged_attention, write_kv
from parity.engine_cases import scattered_tables


def _device():
    return _triton.run_device() or pytest.skip("needs a GPU or TRITON_INTERPRET=1")


# (start positions, new tokens) per request. The engine's usual order is running decodes,
# then new prompts (each group one run: sliced in place); the others go through gathers.
ORDERS = {
    "prefills_then_decodes": ([0, 9, 0, 17, 30], [7, 5, 1, 1, 1]),  # fresh prefill, chunk after a prefix, decodes
    "decodes_then_prefills": ([12, 17, 30, 0, 9], [1, 1, 1, 7, 5]),
    "interleaved": ([12, 0, 17, 9, 30], [1, 7, 1, 5, 1]),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("order", list(ORDERS))
def test_flash_face_matches_gather_on_a_mixed_step(dtype, block_size, order):
    device = _device()
    g = torch.Generator().manual_seed(block_size)
    hq, hkv, d = 4, 2, 64
    starts, news = ORDERS[order]
    lens = [s + n for s, n in zip(starts, news)]
    num_blocks = sum(-(-n // block_size) for n in lens) + 4
    tables = scattered_tables(lens, block_size, num_blocks, seed=3)
    meta = build_metadata(tables, starts, news, block_size, device)
    k_cache = torch.full((num_blocks, block_size, hkv, d), 1e4, dtype=dtype)  # poison: unwritten slots
    v_cache = torch.full((num_blocks, block_size, hkv, d), -1e4, dtype=dtype)
    k_cache, v_cache = k_cache.to(device), v_cache.to(device)
    # Earlier tokens of each request, then this step's new ones.
    for t, s in zip(tables, starts):
        if s:
            slots = torch.tensor([t[p // block_size] * block_size + p % block_size for p in range(s)], device=device)
            kv = torch.randn(2, s, hkv, d, generator=g).to(device, dtype)
            write_kv(k_cache, v_cache, slots, kv[0], kv[1])
    n = sum(news)
    q = torch.randn(1, hq, n, d, generator=g).to(device, dtype)
    q[0, 0, 0, :4] *= 8  # outliers
    k = torch.randn(n, hkv, d, generator=g).to(device, dtype)
    v = torch.randn(n, hkv, d, generator=g).to(device, dtype)
    write_kv(k_cache, v_cache, meta.slot_mapping, k, v)
    want = gather_paged_attention(q.float(), k_cache.float(), v_cache.float(), meta)
    plan = FlashFace(block_size).plan(meta)  # what the runner does before the forward
    got = flash_paged_attention(q, k_cache, v_cache, plan)
    assert got.shape == want.shape and torch.isfinite(got).all()
    # runs of decodes / prefills are sliced in place, others gathered
    sliced = isinstance(plan.dec_rows, slice) and isinstance(plan.pre_rows, slice)
    assert sliced == (order != "interleaved")
    assert want.abs().max() > 0.1
    check_attention(got, want, dtype, f"flash vs fp32 gather, {order}, block size {block_size}")
