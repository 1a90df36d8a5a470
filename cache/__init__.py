"""KV storage for attention: the contiguous static cache and the paged cache with its block pool."""

from cache.block_pool import NULL_BLOCK_ID, BlockPool, hash_block_tokens
from cache.kv_manager import BlockTable, KVCacheManager, slot_mapping
from cache.paged_cache import (KVCapacity, KVCapacityError, KVDtypeError, PagedAttentionMetadata, PagedKVCache,
                               PagedLayerCache, build_metadata, kv_capacity)
from cache.static_cache import StaticKVCache

__all__ = ["NULL_BLOCK_ID", "BlockPool", "hash_block_tokens", "BlockTable", "KVCacheManager", "slot_mapping",
           "KVCapacity", "KVCapacityError", "KVDtypeError", "PagedAttentionMetadata", "PagedKVCache", "PagedLayerCache",
           "build_metadata", "kv_capacity", "StaticKVCache"]
