"""FunctionalKVCache: StaticKVCache's `update` without mutation, for graphs whose caches are inputs.

An exported decoder step (AOTInductor, ONNX, Torch-TensorRT) takes the KV cache as an
input and returns the written cache as an output, so a runtime without in-place buffer
mutation (onnxruntime) can carry it from call to call. This cache gives the model's own
attention exactly that: `update` returns `index_copy` results (new tensors, the inputs
untouched) and remembers them, so the caller reads the written caches after the forward.
"""

from __future__ import annotations

import torch
from torch import nn


class FunctionalKVCache(nn.Module):
    """One layer's keys and values as tensors handed in: (B, n_kv_heads, S, head_dim) each.

    A Module only because Attention.kv_cache is a child-module slot; it owns no buffers
    (k_cache, v_cache are plain attributes, replaced by each `update`).
    """

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        super().__init__()
        assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape, (
            f"k/v caches must be equal (B, n_kv_heads, S, head_dim), got {tuple(k_cache.shape)} "
            f"and {tuple(v_cache.shape)}")
        self.k_cache, self.v_cache = k_cache, v_cache

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv_heads, T, head_dim) at positions input_pos (T,) into new tensors.

        Returns and keeps the new (B, n_kv_heads, S, head_dim) caches; the old ones are not
        modified (the interface of cache/static_cache.py StaticKVCache.update).
        """
        assert input_pos.shape[0] == k.shape[2], (
            f"input_pos has {input_pos.shape[0]} positions but k has {k.shape[2]} tokens")
        assert k.shape[0] == self.k_cache.shape[0], (
            f"k has batch {k.shape[0]}, the cache {self.k_cache.shape[0]}")
        self.k_cache = self.k_cache.index_copy(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache = self.v_cache.index_copy(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache
