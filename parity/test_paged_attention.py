"""Paged attention (the gather face; flash decode on CUDA) against the contiguous StaticKVCache path.

Tolerance, rel_err = max|a - b| / max|b|: fp32 1e-5. The gather path runs the same SDPA
with the same bool mask as the contiguous path, on the same K/V values; only the key
length (sequence vs whole cache) and the batch rows of the projections differ, which
changes float summation order, not the math. bf16 (flash decode vs gather): 2e-2.
"""

import math

import pytest
import torch

from cache import PagedKVCache, build_metadata
from kernels.attention_ref import paged_decode_ref
from model.paged_attention import FlashFace, GatherFace, gather_kv
from parity.engine_cases import make_tiny_model, rel_err, scattered_tables

FP32_TOL = 1e-5
BF16_TOL = 2e-2


class _Cfg:
    n_layers, n_kv_heads, head_dim = 1, 2, 16


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_gather_attention_matches_contiguous(block_size):
    """Three requests (a prefill chunk after a cached prefix, a fresh prefill, a decode) in one
    flat batch against SDPA over each request's contiguous K/V."""
    torch.manual_seed(0)
    hq, hkv, d = 4, 2, 16
    starts, news = [5, 0, 30], [7, 19, 1]
    lens = [s + n for s, n in zip(starts, news)]
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    tables = scattered_tables(lens, block_size, num_blocks, seed=block_size)
    cache = PagedKVCache.allocate(_Cfg, num_blocks, block_size, torch.float32)
    full_k = [torch.randn(1, hkv, n, d) for n in lens]
    full_v = [torch.randn(1, hkv, n, d) for n in lens]
    # The cached prefixes (tokens < start) are written by an earlier "step".
    pre = build_metadata(tables, [0] * 3, starts, block_size)
    view = cache.layer_views()[0]
    if sum(starts):
        cache.bind(pre)
        from model.paged_attention import write_kv
        write_kv(cache.k[0], cache.v[0], pre.slot_mapping,
                 torch.cat([k[0, :, :s].transpose(0, 1) for k, s in zip(full_k, starts)]),
                 torch.cat([v[0, :, :s].transpose(0, 1) for v, s in zip(full_v, starts)]))
    meta = build_metadata(tables, starts, news, block_size)
    cache.bind(meta)
    q = [torch.randn(1, hq, n, d) for n in news]
    k_new = torch.cat([k[:, :, s:] for k, s in zip(full_k, starts)], dim=2)
    v_new = torch.cat([v[:, :, s:] for v, s in zip(full_v, starts)], dim=2)
    got = GatherFace(block_size)(torch.cat(q, dim=2), k_new, v_new, view)  # (1, hq, N, d)
    outs = []
    for qr, kr, vr, s in zip(q, full_k, full_v, starts):
        n = qr.shape[2]
        mask = torch.arange(kr.shape[2])[None, :] <= torch.arange(s, s + n)[:, None]
        outs.append(torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask,
                                                                     enable_gqa=True))
    ref = torch.cat(outs, dim=2)
    assert rel_err(got, ref) <= FP32_TOL
    for r, n in enumerate(lens):  # and the cache holds exactly each request's K/V
        assert torch.equal(gather_kv(cache.k[0], meta.block_tables[r], n), full_k[r])


def test_gather_decode_matches_paged_decode_ref():
    torch.manual_seed(1)
    hq, d, bs = 4, 16, 4  # _Cfg has 2 KV heads
    lens = [1, 9, 17]
    tables = scattered_tables(lens, bs, 16, seed=3)
    cache = PagedKVCache.allocate(_Cfg, 16, bs, torch.float32)
    cache.k[0].normal_()
    cache.v[0].normal_()
    meta = build_metadata(tables, [n - 1 for n in lens], [1, 1, 1], bs)
    cache.bind(meta)
    q = torch.randn(1, hq, 3, d)
    k_last = torch.stack([gather_kv(cache.k[0], meta.block_tables[r], n)[0, :, -1] for r, n in enumerate(lens)], 1)
    v_last = torch.stack([gather_kv(cache.v[0], meta.block_tables[r], n)[0, :, -1] for r, n in enumerate(lens)], 1)
    got = GatherFace(bs)(q, k_last[None], v_last[None], cache.layer_views()[0])[0].transpose(0, 1)
    ref = paged_decode_ref(q[0].transpose(0, 1), cache.k[0], cache.v[0], meta.block_tables, meta.seq_lens)
    assert rel_err(got, ref) <= FP32_TOL


def _paged_logits(model, tables, chunks, block_size, num_blocks):
    """Run the model over a paged cache, one flat batch per step; chunks[step][r] = (start, n)."""
    cache = PagedKVCache.allocate(model.config, num_blocks, block_size, torch.float32)
    face = model.setup_paged_caches(cache)
    logits = [[] for _ in tables]
    try:
        for step in chunks:
            rs = [r for r, c in enumerate(step) if c is not None]
            meta = build_metadata([tables[r] for r in rs], [step[r][0] for r in rs], [step[r][1] for r in rs],
                                  block_size)
            ids = torch.cat([model._tokens[r][step[r][0]:sum(step[r])] for r in rs])
            meta.plan = face.plan(meta)  # the runner's plan step
            cache.bind(meta)
            with torch.no_grad():
                out = model(ids[None], meta.positions)[0]
            for i, r in enumerate(rs):
                logits[r].append(out[meta.query_start_loc[i]:meta.query_start_loc[i + 1]])
    finally:
        model.remove_caches()
    return [torch.cat(x) for x in logits]


def test_model_paged_matches_static_cache():
    """Whole-model logits: chunked prefill + decodes over a paged cache vs StaticKVCache."""
    model = make_tiny_model(seed=3)
    g = torch.Generator().manual_seed(0)
    lens = [23, 9, 14]
    model._tokens = [torch.randint(1, 512, (n,), generator=g) for n in lens]
    bs = 4
    tables = scattered_tables(lens, bs, 40, seed=7)
    # request 0: chunks 10 + 10 then 3 decodes; request 1: prefill 6 then 3 decodes; request 2: 14 at once.
    chunks = [[(0, 10), (0, 6), None], [(10, 10), (6, 1), (0, 14)], [(20, 1), (7, 1), None],
              [(21, 1), (8, 1), None], [(22, 1), None, None]]
    got = _paged_logits(model, tables, chunks, bs, 40)
    for r, n in enumerate(lens):
        model.setup_caches(1, 64)
        with torch.no_grad():
            ref = model(model._tokens[r][None], torch.arange(n))[0]
        model.remove_caches()
        assert got[r].shape == ref.shape
        assert ref.std() > 1e-2, "degenerate logits would make the comparison vacuous"
        assert rel_err(got[r], ref) <= FP32_TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (flash decode path)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_decode_path_matches_gather_cuda(dtype):
    torch.manual_seed(2)
    hq, hkv, d, bs = 8, 2, 64, 16

    class Cfg:
        n_layers, n_kv_heads, head_dim = 1, hkv, d

    lens = [1, 40, 333, 17]
    tables = scattered_tables(lens, bs, 64, seed=5)
    cache = PagedKVCache.allocate(Cfg, 64, bs, dtype, "cuda")
    cache.k[0].normal_()
    cache.v[0].normal_()
    meta = build_metadata(tables, [n - 1 for n in lens], [1] * 4, bs, "cuda")
    cache.bind(meta)
    view = cache.layer_views()[0]
    q = torch.randn(1, hq, 4, d, device="cuda", dtype=dtype)
    k_new = torch.randn(1, hkv, 4, d, device="cuda", dtype=dtype)
    v_new = torch.randn(1, hkv, 4, d, device="cuda", dtype=dtype)
    got = FlashFace(bs)(q, k_new, v_new, view)  # flash decode
    ref = GatherFace(bs)(q, k_new, v_new, view)  # the gather face on the same cache contents
    assert rel_err(got.float(), ref.float()) <= BF16_TOL
    assert math.isfinite(got.float().abs().max().item())
