"""cache/window.py: which blocks leave a sliding window, and KVCacheManager freeing them."""

from cache import NULL_BLOCK_ID, BlockPool, KVCacheManager
from cache import window as sliding


def test_first_live_block():
    # window 8, blocks of 4: a query at position >= n sees keys >= n - 7.
    assert [sliding.first_live_block(n, 8, 4) for n in (0, 7, 8, 10, 11, 12, 15, 16)] == [0, 0, 0, 0, 1, 1, 2, 2]


def test_manager_frees_out_of_window_blocks():
    pool = BlockPool(num_blocks=8, block_size=4, enable_prefix_caching=False)
    kv = KVCacheManager(pool, window=8)
    assert kv.allocate_slots("a", 0, 10) == []  # positions 0-9: blocks 0-2
    held = list(kv.block_ids("a"))
    for n in range(10, 40):  # decode one token at a time
        assert kv.allocate_slots("a", n, 1) == []
        ids = kv.block_ids("a")
        live = sliding.first_live_block(n, 8, 4)
        assert ids[:live] == [NULL_BLOCK_ID] * live and NULL_BLOCK_ID not in ids[live:], (n, ids)
        assert sliding.blocks_held(kv.tables["a"]) <= 3  # cdiv(8, 4) + 1
        pool.check_invariants()
    assert pool.num_free_blocks == 7 - sliding.blocks_held(kv.tables["a"]) and held[0] not in kv.block_ids("a")
    kv.free("a")  # the null entries are not freed again
    assert pool.num_free_blocks == 7
    pool.check_invariants()


def test_no_window_keeps_every_block():
    pool = BlockPool(num_blocks=12, block_size=4, enable_prefix_caching=False)
    kv = KVCacheManager(pool)
    kv.allocate_slots("a", 0, 10)
    for n in range(10, 40):
        kv.allocate_slots("a", n, 1)
    assert NULL_BLOCK_ID not in kv.block_ids("a") and len(kv.block_ids("a")) == 10
