"""Attention over a paged KV cache for a flat batch of requests (prefill chunks and decodes).

Two faces, chosen once per call, visibly:
- gather (any device, any dtype; the readable path and the CPU path): for each request,
  gather its blocks into contiguous K/V (1, Hkv, L, D) and run SDPA with the bool mask
  key_pos <= query_pos, the same mask and op the contiguous StaticKVCache path uses.
- flash decode (CUDA, fp16/bf16, head_dim 64/128, every request has one new token):
  kernels.flash_decode.paged_flash_decode reads the blocks in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLASH_DECODE_DTYPES = (torch.float16, torch.bfloat16)
FLASH_DECODE_HEAD_DIMS = (64, 128)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """Store k, v (N, Hkv, D) at flat slots (N,) of caches (num_blocks, block_size, Hkv, D)."""
    _, _, hkv, d = k_cache.shape
    k_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Tokens 0..seq_len-1 of one sequence as (1, Hkv, seq_len, D) from cache (num_blocks, bs, Hkv, D)."""
    _, bs, hkv, d = cache.shape
    blocks = block_table_row[:(seq_len + bs - 1) // bs].long()
    return cache[blocks].reshape(-1, hkv, d)[:seq_len].transpose(0, 1)[None]


def use_flash_decode(q: torch.Tensor, meta) -> bool:
    return (q.is_cuda and meta.decode_only and q.dtype in FLASH_DECODE_DTYPES
            and q.shape[-1] in FLASH_DECODE_HEAD_DIMS)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_cache) -> torch.Tensor:
    """Write this step's k/v to the cache, then attend every new token to its sequence.

    q (1, Hq, N, D), k/v (1, Hkv, N, D), RoPE applied; layer_cache: cache.PagedLayerCache
    whose `meta` (PagedAttentionMetadata) describes the N tokens. Returns (1, Hq, N, D).
    All writes happen before any read, so a request may read blocks written this step.
    """
    meta = layer_cache.meta
    k_cache, v_cache = layer_cache.k_cache, layer_cache.v_cache
    write_kv(k_cache, v_cache, meta.slot_mapping, k[0].transpose(0, 1), v[0].transpose(0, 1))  # (N, Hkv, D)
    if use_flash_decode(q, meta):
        from kernels.flash_decode import paged_flash_decode

        qd = q[0].transpose(0, 1).contiguous()  # (R, Hq, D): one token per request
        out = paged_flash_decode(qd, k_cache, v_cache, meta.block_tables, meta.seq_lens)
        return out.transpose(0, 1)[None]  # (1, Hq, R, D)
    outs = []
    qsl = meta.query_start_loc
    for r, seq_len in enumerate(meta.seq_lens_host):
        s, e = qsl[r], qsl[r + 1]
        kr = gather_kv(k_cache, meta.block_tables[r], seq_len).to(q.dtype)  # (1, Hkv, L, D)
        vr = gather_kv(v_cache, meta.block_tables[r], seq_len).to(q.dtype)
        key_pos = torch.arange(seq_len, device=q.device)
        mask = key_pos[None, :] <= meta.positions[s:e, None]  # (t, L) bool
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], kr, vr, attn_mask=mask, enable_gqa=True))
    return torch.cat(outs, dim=2)  # (1, Hq, N, D)
