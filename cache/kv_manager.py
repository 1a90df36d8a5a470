"""Per-request block tables over a BlockPool: prefix hits, slot allocation, copy-on-write.

The scheduler talks to `KVCacheManager` in request ids and token counts; it gets back
block ids and (src, dst) copy pairs, never tensors.
"""

from __future__ import annotations

from typing import Optional, Sequence

from cache import window as sliding
from cache.block_pool import NULL_BLOCK_ID, BlockPool, hash_block_tokens


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def slot_mapping(block_ids: Sequence[int], start: int, end: int, block_size: int) -> list[int]:
    """Flat cache slots of token positions start..end-1: block_ids[p // bs] * bs + p % bs."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


class BlockTable:
    """The blocks of one request, in token order: tokens p*bs .. (p+1)*bs-1 live in block_ids[p].

    Invariant: append-only. The one exception is copy-on-write, which swaps the LAST
    entry for a private copy before anything is written to it; entries before it never
    change, so block ids handed to the runner for earlier tokens stay valid. With a sliding
    window the first num_released entries are the null block (cache/window.py: freed).
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.block_ids: list[int] = []
        self.num_released = 0

    def __len__(self) -> int:
        return len(self.block_ids)

    def append(self, ids: Sequence[int]) -> None:
        self.block_ids.extend(ids)

    def swap_last(self, block_id: int) -> int:
        """Copy-on-write only: replace the last block, return the old one."""
        old, self.block_ids[-1] = self.block_ids[-1], block_id
        return old


class KVCacheManager:
    """Block tables of live requests, allocated from one BlockPool."""

    def __init__(self, pool: BlockPool, window: Optional[int] = None):
        self.pool = pool
        self.window = window  # sliding window: blocks before it are freed (cache/window.py)
        self.block_size = pool.block_size
        self.tables: dict[str, BlockTable] = {}
        self.hashes: dict[str, list[int]] = {}  # hash chain of the request's full computed blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def block_ids(self, request_id: str) -> list[int]:
        return self.tables[request_id].block_ids

    def _chain(self, token_ids: Sequence[int], num_full: int, prefix: Sequence[int] = ()) -> list[int]:
        hashes = list(prefix)
        bs = self.block_size
        for i in range(len(hashes), num_full):
            hashes.append(hash_block_tokens(hashes[-1] if hashes else None, token_ids[i * bs:(i + 1) * bs]))
        return hashes

    def get_computed_blocks(self, request_id: str, token_ids: Sequence[int]) -> int:
        """Start the request's table with its cached prefix; return how many tokens it covers.

        At least one token is always left to compute (its logits pick the next token):
        when every token hits, the count is len - 1 and the last hit block, shared, gets
        copied on write by allocate_slots.
        """
        assert request_id not in self.tables, f"request {request_id} already has a block table"
        table = self.tables[request_id] = BlockTable(self.block_size)
        num_full = len(token_ids) // self.block_size
        hashes = self._chain(token_ids, num_full)
        hit = self.pool.lookup(hashes)
        table.append(hit)
        self.hashes[request_id] = hashes[:len(hit)]
        return min(len(hit) * self.block_size, len(token_ids) - 1)

    def allocate_slots(self, request_id: str, num_computed: int, num_new: int) -> Optional[list[tuple[int, int]]]:
        """Make room for tokens num_computed .. num_computed + num_new - 1.

        Returns the (src, dst) block copies the runner must do before this step's writes
        (copy-on-write of a shared block about to be written), or None when the pool is
        short: then nothing changed and the caller preempts someone and retries.
        """
        table = self.tables.get(request_id)
        if table is None:  # (not setdefault: that builds a table per call, and this runs per request per step)
            table = self.tables[request_id] = BlockTable(self.block_size)
            self.hashes[request_id] = []
        if self.window:
            sliding.release_out_of_window(table, self.pool, num_computed, self.window)
        need = max(0, self.blocks_needed(num_computed + num_new) - len(table))
        first = num_computed // self.block_size  # block receiving the first write
        # Copy before writing into a block others hold, or one whose cached tokens are
        # fixed (a full prefix hit recomputes the last token into the last hit block).
        cow = num_new > 0 and first < len(table) and not self.pool.is_private(table.block_ids[first])
        assert not cow or first == len(table) - 1, "only the last block can be shared and written"
        fresh = self.pool.allocate(need + cow)
        if fresh is None:
            return None
        copies = []
        if cow:
            src = table.swap_last(fresh.pop())
            self.pool.free([src])  # our reference moves to the copy
            copies.append((src, table.block_ids[-1]))
            del self.hashes[request_id][first:]  # the copy is not (yet) a cached block
        table.append(fresh)
        return copies

    def cache_full_blocks(self, request_id: str, token_ids: Sequence[int], num_computed: int) -> None:
        """Hash and cache the request's blocks that are now full of computed tokens."""
        if not self.pool.enable_prefix_caching:
            return
        table, hashes = self.tables[request_id], self.hashes[request_id]
        num_full = min(num_computed // self.block_size, len(table))
        if num_full <= len(hashes):
            return
        start = len(hashes)
        hashes[:] = self._chain(token_ids, num_full, hashes)
        for i in range(start, num_full):
            if table.block_ids[i] != NULL_BLOCK_ID:  # (a block freed out of a sliding window)
                self.pool.cache_block(table.block_ids[i], hashes[i])

    def free_tail(self, request_id: str, num_tokens: int) -> None:
        """Release the request's blocks past its first num_tokens tokens (a speculative step's rejected
        slots, scheduler/speculative.py). Those blocks hold no computed token, so none is cached."""
        table = self.tables[request_id]
        keep = self.blocks_needed(num_tokens)
        assert len(self.hashes[request_id]) <= keep, "a cached (full, computed) block cannot be rolled back"
        if keep < len(table):
            tail = table.block_ids[keep:]
            del table.block_ids[keep:]
            self.pool.free(reversed(tail))

    def free(self, request_id: str) -> None:
        """Release every block of the request (preemption, finish or cancel)."""
        table = self.tables.pop(request_id, None)
        self.hashes.pop(request_id, None)
        if table is not None:
            self.pool.free([b for b in reversed(table.block_ids) if b != NULL_BLOCK_ID])
