"""KV storage for attention: contiguous static cache (paged cache to follow)."""

from cache.static_cache import StaticKVCache

__all__ = ["StaticKVCache"]
