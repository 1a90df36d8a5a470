"""Attention over a paged KV cache for a flat batch of requests (prefill chunks and decodes).

Two faces, chosen once when the caches are set up (model/attention_backend.py), visibly:
- GatherFace (any device, any dtype; the readable path and the CPU path): for each request,
  gather its blocks into contiguous K/V (1, Hkv, L, D) and run SDPA with the bool mask
  key_pos <= query_pos, the same mask and op the contiguous StaticKVCache path uses.
- FlashFace (CUDA, or Triton's interpreter; fp16/bf16, head_dim 64/128): the requests with one
  new token go to kernels.flash_decode.paged_flash_decode in one launch (it reads the
  blocks in place); the others (prefill chunks) have their whole K/V gathered into one
  packed tensor by a single index op and go to kernels.flash_attention_varlen in one launch
  (causal bottom-right per request: a chunk after a cached prefix sees that prefix).
  A handful of launches per layer whatever the batch, instead of a loop over requests.
  With a sliding window (face.window) both kernels take it: decodes read only the window's
  blocks, prefills gather only the keys from their first query's window on.

Each face splits planning from running, as FlashInfer does: `face.plan(meta)` once per step
(the runner calls it before the forward; the result goes in meta.plan), then `face(q, k, v,
layer_cache, ...)` per layer.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.nn.functional as F

from model import masks


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


class FlashPlan:
    """A mixed step's requests split into decodes (one new token) and prefills: FlashFace's plan.

    Built once per step, before the forward, and shared by every layer. The rows of each
    group are a slice when its requests are one run (the engine's usual order: running
    decodes, then new prompts), so the kernels read q and write their part of the output in
    place; otherwise a device index (gathered and scattered per layer).
    dec_tables (R_dec, max_blocks) int32, dec_lens (R_dec,) int32: the decodes' rows of the
    metadata. cu_q, cu_k (R_pre + 1,) int32: prefix sums of the prefills' new and total tokens;
    key_slots (sum of their lengths,) long: the flat cache slot of every key, in request order.
    With a sliding window a prefill's keys start at its first query's window (first position
    - window + 1): the bottom-right causal alignment is unchanged by dropping keys from the
    front, and blocks before them (freed, the null block) are never gathered.
    """

    def __init__(self, meta, block_size: int, window: Optional[int] = None):
        device = meta.block_tables.device
        qsl, lens = meta.query_start_loc, meta.seq_lens_host
        n_new = [qsl[r + 1] - qsl[r] for r in range(len(lens))]
        dec = [r for r, n in enumerate(n_new) if n == 1]
        pre = [r for r, n in enumerate(n_new) if n != 1]
        t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731

        def rows(reqs):
            if reqs == list(range(reqs[0], reqs[-1] + 1)):
                return slice(qsl[reqs[0]], qsl[reqs[-1] + 1])
            return torch.cat([torch.arange(qsl[r], qsl[r + 1], device=device) for r in reqs])

        self.dec_rows = rows(dec) if dec else None
        if dec:
            run = isinstance(self.dec_rows, slice)
            sel = slice(dec[0], dec[-1] + 1) if run else t(dec)
            self.dec_tables, self.dec_lens = meta.block_tables[sel], meta.seq_lens[sel]
        self.pre_rows = rows(pre) if pre else None
        if pre:
            q_lens = [n_new[r] for r in pre]
            # Keys before the first query's window are seen by no query of the chunk: not gathered.
            k_from = [max(0, lens[r] - n_new[r] - window + 1) if window else 0 for r in pre]
            k_lens = [lens[r] - f for r, f in zip(pre, k_from)]
            self.cu_q = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=device)
            self.cu_k = torch.tensor([0, *itertools.accumulate(k_lens)], dtype=torch.int32, device=device)
            self.max_q, self.max_k = max(q_lens), max(k_lens)
            # Flat cache slot of every key of every prefill request, in request order.
            k_lens_t = t(k_lens)
            req = torch.repeat_interleave(t(pre), k_lens_t)
            start = torch.repeat_interleave(self.cu_k[:-1].long(), k_lens_t)
            pos = torch.arange(int(sum(k_lens)), device=device) - start
            if window:
                pos = pos + torch.repeat_interleave(t(k_from), k_lens_t)
            blocks = meta.block_tables[req, pos // block_size].long()
            self.key_slots = blocks * block_size + pos % block_size


def _run_rows(kernel, qt: torch.Tensor, out: torch.Tensor, rows) -> None:
    """out[rows] = kernel(qt[rows], out=...): in place for a slice, gather/scatter for an index."""
    if isinstance(rows, slice):
        kernel(qt[rows], out=out[rows])
    else:
        out.index_copy_(0, rows, kernel(qt.index_select(0, rows)))


def flash_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          plan: FlashPlan, window: Optional[int] = None) -> torch.Tensor:
    """Decodes through paged flash decode, prefills through varlen flash attention, both with the
    sliding window `window` (None: none). (1, Hq, N, D)."""
    qt = q[0].transpose(0, 1)  # (N, Hq, D) view
    out = paged_attention_rows(qt, k_cache, v_cache, plan, window, torch.empty_like(qt))
    return out.transpose(0, 1)[None]  # (1, Hq, N, D)


def paged_attention_rows(qt: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: FlashPlan,
                         window: Optional[int], out: torch.Tensor) -> torch.Tensor:
    """flash_paged_attention on (N, Hq, D) rows, into `out` (N', Hq, D), N' >= N: only the plan's rows
    are read and written (scheduler/mixed_graphs.py passes buffers longer than the step). Returns out."""
    from kernels.flash_attention import flash_attention_varlen
    from kernels.flash_decode import paged_flash_decode

    _, _, hkv, d = k_cache.shape
    if plan.dec_rows is not None:
        _run_rows(lambda x, out=None: paged_flash_decode(x, k_cache, v_cache, plan.dec_tables, plan.dec_lens,
                                                         out=out, window=window), qt, out, plan.dec_rows)
    if plan.pre_rows is not None:
        kp = k_cache.view(-1, hkv, d).index_select(0, plan.key_slots)  # (Nk, Hkv, D)
        vp = v_cache.view(-1, hkv, d).index_select(0, plan.key_slots)
        _run_rows(lambda x, out=None: flash_attention_varlen(x, kp, vp, plan.cu_q, plan.cu_k, plan.max_q,
                                                             plan.max_k, causal=True, out=out, window=window),
                  qt, out, plan.pre_rows)
    return out


def _write(k: torch.Tensor, v: torch.Tensor, layer_cache):
    """Store this step's k/v (1, Hkv, N, D) at the metadata's slots; return (meta, k_cache, v_cache).
    Every face writes before it reads, so a request may read blocks written this step."""
    meta, k_cache, v_cache = layer_cache.meta, layer_cache.k_cache, layer_cache.v_cache
    write_kv(k_cache, v_cache, meta.slot_mapping, k[0].transpose(0, 1), v[0].transpose(0, 1))  # (N, Hkv, D)
    return meta, k_cache, v_cache


class GatherFace:
    """The readable face: per request, gathered K/V and masked SDPA. Nothing to plan."""

    name = "sdpa"

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.window: Optional[int] = None  # sliding window (set by setup_paged_caches); None = full

    def plan(self, meta) -> None:
        """This face reads the metadata as it is."""
        return None

    def __call__(self, q, k, v, layer_cache, input_pos=None, mask=None) -> torch.Tensor:
        """q (1, Hq, N, D), k/v (1, Hkv, N, D) after RoPE over a cache.PagedLayerCache -> (1, Hq, N, D)."""
        meta, k_cache, v_cache = _write(k, v, layer_cache)
        return gather_paged_attention(q, k_cache, v_cache, meta, self.window)


class FlashFace:
    """The flash face: one paged flash-decode launch for a decode-only step (the CUDA-graph one);
    a mixed step runs flash_paged_attention over the FlashPlan made by plan()."""

    name = "flash"

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.window: Optional[int] = None  # sliding window (set by setup_paged_caches); None = full
        # scheduler/mixed_graphs.py's hook while it captures (or simulates) a piecewise mixed step:
        # every attention call goes to piecewise.attend(q, k_cache, v_cache) after the cache write.
        self.piecewise = None

    def plan(self, meta) -> Optional[FlashPlan]:
        """The step's FlashPlan; None for a decode-only step, which reads the metadata directly."""
        return None if meta.decode_only else FlashPlan(meta, self.block_size, self.window)

    def tune(self, paged_kv, group: int, max_num_seqs: int, max_num_batched_tokens: int,
             max_model_len: int) -> int:
        """Autotune both kernels now for every shape key an engine of these limits can reach (at
        start-up, as vLLM captures graphs then): a key first met mid-serving made that step seconds
        long. group: query heads per KV head. Returns the number of keys tuned (0 off the GPU)."""
        from kernels.flash_attention import tune_varlen
        from kernels.flash_decode import tune_paged_decode

        k, v = paged_kv.k[0], paged_kv.v[0]
        num_q_heads = k.shape[2] * group  # this rank's heads under tensor parallelism
        max_blocks = -(-max_model_len // self.block_size)
        n = tune_paged_decode(k, v, num_q_heads, max_num_seqs, max_blocks, window=self.window)
        max_q = min(max_num_batched_tokens, max_model_len)
        return n + tune_varlen(num_q_heads, k.shape[2], k.shape[3], k.dtype, k.device, max_q, max_model_len,
                               max_num_batched_tokens, causal=True, window=self.window)

    @staticmethod
    def rope_cache(qkv, cos, sin, n_heads, n_kv_heads, layer_cache, input_pos=None) -> torch.Tensor:
        """RoPE + the paged cache write at meta.slot_mapping in one kernel (kernels.rope_cache);
        returns q (N, Hq, D)."""
        from kernels.rope_cache import rope_cache

        return rope_cache(qkv, cos, sin, n_heads, n_kv_heads, layer_cache.k_cache, layer_cache.v_cache,
                          slot_mapping=layer_cache.meta.slot_mapping)

    def __call__(self, q, k, v, layer_cache, input_pos=None, mask=None) -> torch.Tensor:
        """q (1, Hq, N, D), k/v (1, Hkv, N, D) after RoPE over a cache.PagedLayerCache -> (1, Hq, N, D).
        k, v None: rope_cache already wrote them."""
        if k is None:
            meta, k_cache, v_cache = layer_cache.meta, layer_cache.k_cache, layer_cache.v_cache
        else:
            meta, k_cache, v_cache = _write(k, v, layer_cache)
        if self.piecewise is not None:
            return self.piecewise.attend(q, k_cache, v_cache)
        if meta.decode_only:  # the common step (and the CUDA-graph one): one launch, no indexing
            from kernels.flash_decode import paged_flash_decode

            qd = q[0].transpose(0, 1).contiguous()  # (R, Hq, D): one token per request
            out = paged_flash_decode(qd, k_cache, v_cache, meta.block_tables, meta.seq_lens, window=self.window)
            return out.transpose(0, 1)[None]  # (1, Hq, R, D)
        assert meta.plan is not None, "a mixed step needs meta.plan = face.plan(meta) before the forward"
        return flash_paged_attention(q, k_cache, v_cache, meta.plan, self.window)


def gather_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta,
                           window: Optional[int] = None) -> torch.Tensor:
    """The gather face: per request, contiguous K/V and SDPA with the position mask. (1, Hq, N, D).

    window: keys at positions > query - window only (Mistral). Blocks wholly before the window may
    have been freed (cache/window.py: their table entries name the null block, whose finite
    contents are gathered and masked here; the flash face never reads them)."""
    outs = []
    qsl = meta.query_start_loc
    for r, seq_len in enumerate(meta.seq_lens_host):
        s, e = qsl[r], qsl[r + 1]
        kr = gather_kv(k_cache, meta.block_tables[r], seq_len).to(q.dtype)  # (1, Hkv, L, D)
        vr = gather_kv(v_cache, meta.block_tables[r], seq_len).to(q.dtype)
        key_pos = torch.arange(seq_len, device=q.device)
        mask = masks.visible_keys(key_pos, meta.positions[s:e], window)  # (t, L) bool
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], kr, vr, attn_mask=mask, enable_gqa=True))
    return torch.cat(outs, dim=2)  # (1, Hq, N, D)
