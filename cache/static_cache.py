"""StaticKVCache: a contiguous, preallocated key/value store for one attention layer."""

from __future__ import annotations

import torch
from torch import nn


class StaticKVCache(nn.Module):
    """Keys and values for positions 0..max_seq_len-1 of every sequence in a batch.

    Buffers are (max_batch_size, n_kv_heads, max_seq_len, head_dim). Created only by
    `Transformer.setup_caches`, never in a model's `__init__`. Slots not yet written
    hold zeros; the attention mask built from positions keeps them out.
    """

    def __init__(self, max_batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        shape = (max_batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv_heads, T, head_dim) at positions input_pos (T,); return full caches.

        The returned tensors are (B, n_kv_heads, max_seq_len, head_dim), sliced to the
        batch size of k. Writes are index_copy_ so compile/export see no Python branching.
        """
        assert input_pos.shape[0] == k.shape[2], (
            f"input_pos has {input_pos.shape[0]} positions but k has {k.shape[2]} tokens")
        B = k.shape[0]
        k_out, v_out = self.k_cache[:B], self.v_cache[:B]
        k_out.index_copy_(2, input_pos, k.to(k_out.dtype))
        v_out.index_copy_(2, input_pos, v.to(v_out.dtype))
        return k_out, v_out
