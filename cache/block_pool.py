"""BlockPool: a fixed set of KV blocks, a free queue, ref counts and the prefix cache.

Pure bookkeeping over block ids (ints); no tensors. The physical K/V storage lives in
`cache.paged_cache.PagedKVCache`, indexed by the same ids.

Invariants (checked by `check_invariants`, relied on everywhere):
- Block 0 is the null block: never allocated, never freed, never cached. Block tables
  are padded with it, so a stray read of padding lands on harmless memory.
- A block is in the free queue iff its ref_cnt is 0 (and it is not the null block).
- A free block may still hold a cached prefix (block_hash is not None): it can be hit
  again (ref_cnt 0 -> 1, leaves the free queue) until allocation evicts it from the
  queue's head. Freed blocks join the tail, so eviction is least-recently-freed first.
- Only full blocks are hashed, and a hashed block is never written again (its tokens
  are fixed); a writer that finds one shared copies it first (see BlockTable/COW).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

NULL_BLOCK_ID = 0


def hash_block_tokens(parent_hash: Optional[int], token_ids: Sequence[int]) -> int:
    """Hash of a full block: chained on the previous block's hash so equal hashes mean equal prefixes.

    Python's hash of ints and tuples of ints is not salted (PYTHONHASHSEED only affects
    str/bytes), so hashes agree across processes. A 64-bit collision would alias two
    prefixes; we accept that risk as vLLM's default hash does.
    """
    return hash((parent_hash, tuple(token_ids)))


@dataclass(eq=False)
class KVBlock:
    """One block's metadata. prev_free/next_free: only the free queue links these."""

    block_id: int
    ref_cnt: int = 0
    block_hash: Optional[int] = None  # set once the block is full and cached
    prev_free: Optional["KVBlock"] = field(default=None, repr=False)
    next_free: Optional["KVBlock"] = field(default=None, repr=False)


class FreeBlockQueue:
    """Doubly linked list of free blocks: O(1) pop from the head, append at the tail, and
    removal from the middle (a prefix hit takes a free cached block back)."""

    def __init__(self, blocks: Iterable[KVBlock]):
        self.head = KVBlock(-1)  # sentinels
        self.tail = KVBlock(-1)
        self.head.next_free, self.tail.prev_free = self.tail, self.head
        self.num_free = 0
        for b in blocks:
            self.append(b)

    def append(self, block: KVBlock) -> None:
        assert block.prev_free is None and block.next_free is None, f"block {block.block_id} already queued"
        last = self.tail.prev_free
        last.next_free, block.prev_free = block, last
        block.next_free, self.tail.prev_free = self.tail, block
        self.num_free += 1

    def remove(self, block: KVBlock) -> None:
        assert block.prev_free is not None and block.next_free is not None, (
            f"block {block.block_id} is not in the free queue")
        block.prev_free.next_free, block.next_free.prev_free = block.next_free, block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def popleft(self) -> KVBlock:
        first = self.head.next_free
        assert first is not self.tail, "popleft on an empty free queue"
        self.remove(first)
        return first

    def __iter__(self):
        b = self.head.next_free
        while b is not self.tail:
            yield b
            b = b.next_free


class BlockPool:
    """num_blocks blocks of block_size tokens (block 0 reserved), with prefix caching.

    allocate(n) returns n fresh block ids, or None when fewer than n are free: the caller
    decides whom to preempt. Counters `num_prefix_hits` (blocks) and `num_evictions` are
    kept for tests and stats.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"a block pool needs >= 2 blocks (block 0 is the null block), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.blocks[NULL_BLOCK_ID].ref_cnt = 1  # pinned forever: never enters the free queue
        self.free_queue = FreeBlockQueue(self.blocks[1:])
        self.cached: dict[int, KVBlock] = {}  # block_hash -> block (hashed blocks only)
        self.num_prefix_hits = 0
        self.num_evictions = 0

    @property
    def num_usable_blocks(self) -> int:
        """Blocks a request may ever hold (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks allocate() can hand out now (free, cached or not)."""
        return self.free_queue.num_free

    def allocate(self, n: int) -> Optional[list[int]]:
        """n blocks with ref_cnt 1, or None (nothing taken) when fewer than n are free."""
        if n > self.free_queue.num_free:
            return None
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            if block.block_hash is not None:  # evict the least recently freed cached block
                del self.cached[block.block_hash]
                block.block_hash = None
                self.num_evictions += 1
            block.ref_cnt = 1
            out.append(block.block_id)
        return out

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the free queue's tail.

        Pass a request's blocks in reverse order (last block first): its tail blocks are
        the least likely to be shared, so they should be evicted first.
        """
        for bid in block_ids:
            assert bid != NULL_BLOCK_ID, "the null block is never freed"
            block = self.blocks[bid]
            assert block.ref_cnt > 0, f"double free of block {bid}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def ref(self, block_id: int) -> None:
        """Add a reference to an allocated block (sharing it)."""
        block = self.blocks[block_id]
        assert block.ref_cnt > 0, f"ref() of free block {block_id}; use lookup() for cached ones"
        block.ref_cnt += 1

    def ref_cnt(self, block_id: int) -> int:
        return self.blocks[block_id].ref_cnt

    def is_private(self, block_id: int) -> bool:
        """True when one request holds the block and it is not cached: safe to write."""
        block = self.blocks[block_id]
        return block.ref_cnt == 1 and block.block_hash is None

    def lookup(self, block_hashes: Sequence[int]) -> list[int]:
        """The longest run of cached blocks matching block_hashes; each gets ref_cnt += 1."""
        if not self.enable_prefix_caching:
            return []
        hit = []
        for h in block_hashes:
            block = self.cached.get(h)
            if block is None:
                break
            if block.ref_cnt == 0:  # a freed cached block comes back to life
                self.free_queue.remove(block)
            block.ref_cnt += 1
            hit.append(block.block_id)
        self.num_prefix_hits += len(hit)
        return hit

    def cache_block(self, block_id: int, block_hash: int) -> None:
        """Mark a full, computed, owned block as holding the prefix `block_hash`."""
        if not self.enable_prefix_caching:
            return
        block = self.blocks[block_id]
        assert block_id != NULL_BLOCK_ID and block.ref_cnt > 0, f"cannot cache block {block_id}"
        if block.block_hash is not None or block_hash in self.cached:
            return  # already cached (or an identical prefix computed twice: keep the first)
        block.block_hash = block_hash
        self.cached[block_hash] = block

    def check_invariants(self) -> None:
        """Assert the invariants of the module docstring (tests call this)."""
        assert self.blocks[NULL_BLOCK_ID].ref_cnt >= 1 and self.blocks[NULL_BLOCK_ID].block_hash is None
        queued = {b.block_id for b in self.free_queue}
        assert len(queued) == self.free_queue.num_free
        for b in self.blocks[1:]:
            assert (b.ref_cnt == 0) == (b.block_id in queued), f"block {b.block_id}: ref_cnt {b.ref_cnt}"
            if b.block_hash is not None:
                assert self.cached[b.block_hash] is b
        assert len(self.cached) == sum(b.block_hash is not None for b in self.blocks)
