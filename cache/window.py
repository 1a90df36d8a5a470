"""Sliding-window block release: a request's blocks that no future query can see go back to the pool.

With a sliding window W (Mistral), a query at position p sees keys in (p - W, p]. Once a
request has computed n tokens, every later query sits at a position >= n, so it sees no key
before n - W + 1: the blocks wholly before that position are dead for every layer (one
window for the whole model; model/arch.py refuses per-layer windows). KVCacheManager calls
`release_out_of_window` before each allocation: the dead blocks are freed and their block
table entries set to the null block, so the table keeps its positions (block p still holds
tokens p*bs ..) and the attention kernels, whose window bound starts past them, never read
them (kernels/flash_decode.py, kernels/flash_attention.py; the gather face reads the null
block's finite contents and masks them). Releasing before an allocation that then fails (the
scheduler preempts and retries) is still right: those blocks are dead either way.

A request then holds at most cdiv(W - 1 + k, bs) + 1 blocks during a step of k new tokens
(cdiv(W, bs) + 1 while decoding), whatever its length: `max_tokens_held` is what admission
checks against the pool instead of the whole prompt + max_tokens.
"""

from __future__ import annotations

from cache.block_pool import NULL_BLOCK_ID


def first_live_block(num_computed: int, window: int, block_size: int) -> int:
    """Index of the first block a query at a position >= num_computed can still see."""
    return max(0, num_computed - window + 1) // block_size


def release_out_of_window(table, pool, num_computed: int, window: int) -> int:
    """Free `table`'s blocks before first_live_block (their entries become NULL_BLOCK_ID); returns
    how many were freed. table: a cache.kv_manager.BlockTable (its num_released entries, all at
    the front, are already null: each call looks only at the new ones)."""
    end = min(first_live_block(num_computed, window, table.block_size), len(table.block_ids))
    start = table.num_released
    if end <= start:
        return 0
    ids = table.block_ids
    dead = [b for b in ids[start:end] if b != NULL_BLOCK_ID]
    ids[start:end] = [NULL_BLOCK_ID] * (end - start)
    table.num_released = end
    pool.free(reversed(dead))  # newest first, as KVCacheManager.free does
    return len(dead)


def max_tokens_held(total_tokens: int, window: int | None, max_step_tokens: int, block_size: int) -> int:
    """Most KV tokens (whole blocks) a request of total_tokens ever holds at once: all of them
    without a window; with one, the window plus a step's new tokens (at most max_step_tokens),
    rounded out to blocks."""
    if not window:
        return total_tokens
    k = max(1, min(max_step_tokens, total_tokens))
    blocks = -(-(window - 1 + k) // block_size) + 1
    return min(total_tokens, blocks * block_size)


def blocks_held(table) -> int:
    """Blocks of a BlockTable that are not the null block (what the request holds in the pool)."""
    return sum(b != NULL_BLOCK_ID for b in table.block_ids)
