"""Shared case of the paged-attention parity tests (and of the planted-fault test).

The gather face of paged attention against SDPA over each request's contiguous K/V: three
requests in one flat batch (a prefill chunk after a cached prefix, a fresh prefill, a
decode), scattered block tables, the cache poisoned with NaN so that reading a slot
nobody wrote fails. Tolerance (fp32, per element |got - ref| <= atol + rtol * |ref|):
rtol 1e-5, atol 1e-6. Both sides run SDPA with the same bool mask on the same K/V values in
fp32; only the key length (sequence vs whole cache) and the batch rows change the summation
order, which a CPU's SDPA may block by length. Measured (2026-11-26, block sizes 1/4/16):
bit-identical here (|ref| up to 2.3); the paged decode reference against the gather face,
same bound: |diff| <= 1.8e-7, 0.05 of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cache import PagedKVCache, build_metadata
from model import paged_attention as pa
from parity.engine_cases import scattered_tables
from parity.tolerance import Tol, assert_close

FP32_TOL = Tol(atol=1e-6, rtol=1e-5)


class TinyCfg:
    """The cache shape of one attention layer: 2 KV heads of 16."""

    n_layers, n_kv_heads, head_dim = 1, 2, 16


def run_gather_attention(block_size: int, seed: int = 0):
    """(paged output, contiguous SDPA output, cache, meta, full K per request) for the mixed batch."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d = 4, TinyCfg.n_kv_heads, TinyCfg.head_dim
    starts, news = [5, 0, 30], [7, 19, 1]
    lens = [s + n for s, n in zip(starts, news)]
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    tables = scattered_tables(lens, block_size, num_blocks, seed=block_size + seed)
    cache = PagedKVCache.allocate(TinyCfg, num_blocks, block_size, torch.float32)
    cache.k[0].fill_(float("nan"))  # poison: a slot read before it is written gives NaN
    cache.v[0].fill_(float("nan"))
    full_k = [torch.randn(1, hkv, n, d, generator=g) for n in lens]
    full_v = [torch.randn(1, hkv, n, d, generator=g) for n in lens]
    pre = build_metadata(tables, [0] * 3, starts, block_size)  # the cached prefixes: an earlier step
    pa.write_kv(cache.k[0], cache.v[0], pre.slot_mapping,
                torch.cat([k[0, :, :s].transpose(0, 1) for k, s in zip(full_k, starts)]),
                torch.cat([v[0, :, :s].transpose(0, 1) for v, s in zip(full_v, starts)]))
    meta = build_metadata(tables, starts, news, block_size)
    cache.bind(meta)
    q = [torch.randn(1, hq, n, d, generator=g) for n in news]
    k_new = torch.cat([k[:, :, s:] for k, s in zip(full_k, starts)], dim=2)
    v_new = torch.cat([v[:, :, s:] for v, s in zip(full_v, starts)], dim=2)
    got = pa.GatherFace(block_size)(torch.cat(q, dim=2), k_new, v_new, cache.layer_views()[0])  # (1, hq, N, d)
    outs = []
    for qr, kr, vr, s in zip(q, full_k, full_v, starts):
        n = qr.shape[2]
        mask = torch.arange(kr.shape[2])[None, :] <= torch.arange(s, s + n)[:, None]
        outs.append(F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask, enable_gqa=True))
    return got, torch.cat(outs, dim=2), cache, meta, full_k


def check_gather_attention(block_size: int, seed: int = 0):
    """Asserts the paged gather face equals contiguous SDPA and the cache holds each request's K."""
    got, ref, cache, meta, full_k = run_gather_attention(block_size, seed)
    result = assert_close(got, ref, FP32_TOL, f"paged gather attention, block size {block_size}")
    for r, k in enumerate(full_k):
        n = k.shape[2]
        blocks = meta.block_tables[r, :(n + block_size - 1) // block_size].long()
        stored = cache.k[0][blocks].reshape(-1, TinyCfg.n_kv_heads, TinyCfg.head_dim)[:n]  # (n, Hkv, D)
        assert torch.equal(stored, k[0].transpose(0, 1)), f"request {r}: the cache does not hold its K"
    return result
