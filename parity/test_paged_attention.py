"""Paged attention (the gather face; flash decode on CUDA) against the contiguous StaticKVCache path.

Tolerances are per element (parity.tolerance): the gather face's in parity/paged_cases.py;
whole-model logits (paged vs static cache, fp32) rtol 1e-5, atol 1e-5 (logits |ref| up to 4.1,
same math in another summation order; measured |diff| <= 2.9e-6, 0.25 of the bound, 2026-11-26); bf16/fp16 flash
decode against the fp32 gather face: the attention kernels' bound (kernels/tests/attention_cases.py).
"""

import pytest
import torch

from cache import PagedKVCache, build_metadata
from kernels.attention_ref import paged_decode_ref
from kernels.tests.attention_cases import check_attention
from model.paged_attention import FlashFace, GatherFace, gather_kv, gather_paged_attention
from parity import paged_cases
from parity.engine_cases import make_tiny_model, scattered_tables
from parity.tolerance import Tol, assert_close

LOGITS_TOL = Tol(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_gather_attention_matches_contiguous(block_size):
    """Three requests (a prefill chunk after a cached prefix, a fresh prefill, a decode) in one
    flat batch against SDPA over each request's contiguous K/V."""
    paged_cases.check_gather_attention(block_size)


def test_gather_decode_matches_paged_decode_ref():
    g = torch.Generator().manual_seed(1)
    hq, d, bs = 4, 16, 4  # TinyCfg has 2 KV heads
    lens = [1, 9, 17]
    tables = scattered_tables(lens, bs, 16, seed=3)
    cache = PagedKVCache.allocate(paged_cases.TinyCfg, 16, bs, torch.float32)
    cache.k[0].normal_(generator=g)
    cache.v[0].normal_(generator=g)
    meta = build_metadata(tables, [n - 1 for n in lens], [1, 1, 1], bs)
    cache.bind(meta)
    q = torch.randn(1, hq, 3, d, generator=g)
    k_last = torch.stack([gather_kv(cache.k[0], meta.block_tables[r], n)[0, :, -1] for r, n in enumerate(lens)], 1)
    v_last = torch.stack([gather_kv(cache.v[0], meta.block_tables[r], n)[0, :, -1] for r, n in enumerate(lens)], 1)
    got = GatherFace(bs)(q, k_last[None], v_last[None], cache.layer_views()[0])[0].transpose(0, 1)
    ref = paged_decode_ref(q[0].transpose(0, 1), cache.k[0], cache.v[0], meta.block_tables, meta.seq_lens)
    assert_close(got, ref, paged_cases.FP32_TOL, "gather decode vs paged_decode_ref")


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
        assert_close(got[r], ref, LOGITS_TOL, f"request {r}: paged vs static-cache logits")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (flash decode path)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_decode_path_matches_gather_cuda(dtype):
    g = torch.Generator().manual_seed(2)
    hq, hkv, d, bs = 8, 2, 64, 16

    class Cfg:
        n_layers, n_kv_heads, head_dim = 1, hkv, d

    lens = [1, 40, 333, 17]
    tables = scattered_tables(lens, bs, 64, seed=5)
    cache = PagedKVCache.allocate(Cfg, 64, bs, dtype, "cuda")
    cache.k[0].copy_(torch.randn(cache.k[0].shape, generator=g))
    cache.v[0].copy_(torch.randn(cache.v[0].shape, generator=g))
    meta = build_metadata(tables, [n - 1 for n in lens], [1] * 4, bs, "cuda")
    cache.bind(meta)
    view = cache.layer_views()[0]
    q, k_new, v_new = (torch.randn(1, h, 4, d, generator=g).to("cuda", dtype) for h in (hq, hkv, hkv))
    got = FlashFace(bs)(q, k_new, v_new, view)  # flash decode (writes k_new, v_new first)
    ref = gather_paged_attention(q.float(), cache.k[0].float(), cache.v[0].float(), meta)  # fp32 gather
    check_attention(got, ref, dtype, "paged flash decode vs fp32 gather")
