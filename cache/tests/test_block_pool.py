"""BlockPool, BlockTable/KVCacheManager and PagedKVCache sizing: pure bookkeeping, no model."""

import pytest
import torch

from cache import (NULL_BLOCK_ID, BlockPool, KVCacheManager, KVCapacityError, PagedKVCache, kv_capacity,
                   slot_mapping)
from cache.paged_cache import bytes_per_token, resolve_budget


class Cfg:  # the three fields kv_capacity reads from a ModelConfig
    n_layers, n_kv_heads, head_dim = 2, 2, 8


def test_allocate_free_and_null_block():
    pool = BlockPool(num_blocks=5, block_size=4)
    assert pool.num_free_blocks == 4  # block 0 is never handed out
    got = pool.allocate(4)
    assert sorted(got) == [1, 2, 3, 4] and NULL_BLOCK_ID not in got
    assert pool.allocate(1) is None  # no room: None, the caller preempts
    pool.free(got[:2])
    assert pool.allocate(3) is None and pool.num_free_blocks == 2  # all-or-nothing
    pool.free(got[2:])
    assert pool.num_free_blocks == 4
    pool.check_invariants()
    with pytest.raises(AssertionError, match="double free"):
        pool.free([got[0]])


def test_prefix_cache_hit_refcount_and_lru_eviction():
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b, c = pool.allocate(3)
    for bid, h in ((a, 10), (b, 11), (c, 12)):
        pool.cache_block(bid, h)
    assert pool.lookup([10, 11, 99]) == [a, b]  # longest run of hits, each ref_cnt += 1
    assert pool.ref_cnt(a) == 2 and pool.num_prefix_hits == 2
    pool.free([c, b, a])  # owner frees (reverse order: tail first)
    pool.free([b, a])  # sharer frees
    assert pool.num_free_blocks == 3
    pool.check_invariants()
    # Freed cached blocks are still hits until evicted; a hit takes them out of the free queue.
    assert pool.lookup([10]) == [a] and pool.num_free_blocks == 2
    pool.free([a])
    # Eviction is least recently freed first: c (freed first), then b, then a.
    assert pool.allocate(1) == [c] and pool.num_evictions == 1
    assert pool.lookup([10, 11, 12]) == [a, b]
    pool.check_invariants()


def test_slot_mapping():
    assert slot_mapping([7, 3], 2, 6, 4) == [30, 31, 12, 13]


def test_manager_prefix_sharing_and_cow_on_full_hit():
    pool = BlockPool(num_blocks=10, block_size=4)
    kv = KVCacheManager(pool)
    prompt = list(range(100, 108))  # exactly 2 full blocks
    assert kv.get_computed_blocks("a", prompt) == 0
    assert kv.allocate_slots("a", 0, len(prompt)) == []
    kv.cache_full_blocks("a", prompt, 8)
    a_blocks = list(kv.block_ids("a"))
    # Same 8 tokens + 3 more: both blocks hit and are shared.
    hit = kv.get_computed_blocks("b", prompt + [1, 2, 3])
    assert hit == 8 and kv.block_ids("b") == a_blocks
    assert all(pool.ref_cnt(x) == 2 for x in a_blocks)
    assert kv.allocate_slots("b", 8, 3) == []
    # The exact same prompt: every token hits; the last one is recomputed into a private copy.
    hit = kv.get_computed_blocks("c", prompt)
    assert hit == 7
    copies = kv.allocate_slots("c", 7, 1)
    assert len(copies) == 1 and copies[0][0] == a_blocks[1]
    assert kv.block_ids("c")[0] == a_blocks[0] and kv.block_ids("c")[1] == copies[0][1]
    assert pool.ref_cnt(a_blocks[1]) == 2  # a and b; c moved to its copy
    for rid in "abc":
        kv.free(rid)
    assert pool.num_free_blocks == 9
    pool.check_invariants()


def test_allocate_slots_none_changes_nothing():
    pool = BlockPool(num_blocks=3, block_size=2)
    kv = KVCacheManager(pool)
    kv.get_computed_blocks("a", [1, 2, 3])
    assert kv.allocate_slots("a", 0, 3) == []
    assert kv.allocate_slots("a", 3, 2) is None  # needs a third block
    assert len(kv.block_ids("a")) == 2 and pool.num_free_blocks == 0


def test_kv_capacity_and_errors():
    per_tok = bytes_per_token(Cfg, torch.float16)
    assert per_tok == 2 * 2 * 2 * 8 * 2
    cap = kv_capacity(Cfg, torch.float16, budget_bytes=per_tok * 16 * 10 + 5, block_size=16)
    assert cap.num_blocks == 10 and cap.num_tokens == 9 * 16
    cap.check_fits(144)
    with pytest.raises(KVCapacityError, match="can never fit"):
        cap.check_fits(145)
    with pytest.raises(KVCapacityError, match="at least 2"):
        kv_capacity(Cfg, torch.float16, budget_bytes=per_tok * 16, block_size=16)
    with pytest.raises(KVCapacityError, match="CUDA"):
        resolve_budget(torch.device("cpu"), None, 0.5)


def test_paged_kv_cache_allocate_and_copy_blocks():
    cache = PagedKVCache.allocate(Cfg, num_blocks=4, block_size=2, dtype=torch.float32)
    assert len(cache.k) == 2 and cache.k[0].shape == (4, 2, 2, 8)
    assert cache.nbytes == 2 * 2 * 4 * 2 * 2 * 8 * 4
    cache.k[1][2] = 3.0
    cache.copy_blocks([(2, 3)])
    assert torch.equal(cache.k[1][3], cache.k[1][2]) and cache.k[0][3].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int32, "float16"])
def test_non_float_kv_dtype_refused(dtype):
    from types import SimpleNamespace

    from cache import KVDtypeError

    config = SimpleNamespace(n_layers=2, n_kv_heads=2, head_dim=8)
    with pytest.raises(KVDtypeError, match="kv_dtype must be a floating torch.dtype"):
        kv_capacity(config, dtype, 1 << 20)
    with pytest.raises(KVDtypeError, match=f"got {dtype}"):
        PagedKVCache.allocate(config, 4, 16, dtype)
    assert PagedKVCache.allocate(config, 4, 16, torch.bfloat16).k[0].dtype == torch.bfloat16  # control
