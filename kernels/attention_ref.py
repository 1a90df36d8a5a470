"""attention: plain-PyTorch references for the Triton kernels in flash_attention.py / flash_decode.py.

Every reference computes in fp32 and returns the query's dtype, so a kernel's error
against it is the kernel's own rounding. Beside them: `naive_attention`, the readable path
in the input dtype (a contender the benchmarks time, not a reference), and `paged_kv`, which
lays a contiguous cache out as a shuffled paged pool. The math, for one (batch, query head h):

    kv head    g(h) = h // (Hq // Hkv)                                  (GQA / MQA)
    scores     S[i, j] = sm_scale * <q[i], k_g(h)[j]>                   sm_scale = 1/sqrt(D) by default
    causal     S[i, j] = -inf  where j > i + (S_kv - S_q)               (bottom-right, as flash-attn)
    softmax    P[i, :] = exp(S[i, :] - max_j S[i, j]) / sum_j exp(...)
    output     O[i]    = sum_j P[i, j] v_g(h)[j]

A query row that may attend no key at all (causal with S_q > S_kv, or an empty KV)
has output 0, as in flash-attn; a plain softmax would give NaN there.
"""

from __future__ import annotations

import math

import torch


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """softmax(sm_scale * q k^T [+ causal mask]) v in fp32, for (B, H, S, D) tensors.

    q: (B, Hq, S_q, D); k, v: (B, Hkv, S_kv, D) with Hq % Hkv == 0. Causal alignment is
    bottom-right: query i attends keys j <= i + S_kv - S_q. window (causal only; None/0 = none):
    also j > i + S_kv - S_q - window, the rule of model.masks.visible_keys (transformers' sliding
    window). Returns (B, Hq, S_q, D) in q.dtype.
    """
    B, Hq, S_q, D = q.shape
    Bk, Hkv, S_kv, Dk = k.shape
    if k.shape != v.shape or Bk != B or Dk != D or Hq % Hkv != 0:
        raise ValueError(f"attention_ref: expected q (B, Hq, S_q, D), k = v (B, Hkv, S_kv, D) with "
                         f"Hq % Hkv == 0; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    group = Hq // Hkv
    kf = k.float().repeat_interleave(group, dim=1)  # (B, Hq, S_kv, D)
    vf = v.float().repeat_interleave(group, dim=1)  # (B, Hq, S_kv, D)
    scores = scale * (q.float() @ kf.transpose(-1, -2))  # (B, Hq, S_q, S_kv)
    if window:
        assert causal, "attention_ref: a window needs causal=True"
        allowed = window_visible(S_q, S_kv, window, q.device)  # (S_q, S_kv)
    elif causal:
        allowed = ~causal_mask(S_q, S_kv, q.device)  # (S_q, S_kv)
    else:
        allowed = torch.ones(S_q, S_kv, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(allowed.any(dim=-1, keepdim=True), probs, 0.0)  # empty rows -> 0, not NaN
    return (probs @ vf).to(q.dtype)  # (B, Hq, S_q, D)


def window_visible(seq_q: int, seq_kv: int, window: int, device) -> torch.Tensor:
    """(S_q, S_kv) bool, True where key j is visible to query i at position p = i + S_kv - S_q
    under a sliding window: p - window < j <= p (model.masks.visible_keys' rule; the kernel
    tests check the two agree with transformers' sliding-window mask)."""
    pos = torch.arange(seq_q, device=device)[:, None] + (seq_kv - seq_q)
    j = torch.arange(seq_kv, device=device)[None, :]
    return (j <= pos) & (j > pos - window)


def causal_mask(seq_q: int, seq_kv: int, device) -> torch.Tensor:
    """(S_q, S_kv) bool, True where key j is hidden from query i: j > i + (S_kv - S_q) (bottom-right)."""
    return torch.ones(seq_q, seq_kv, dtype=torch.bool, device=device).triu(1 + seq_kv - seq_q)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """Textbook attention in the input dtype (Hugging Face's "eager"), for (B, H, S, D) tensors.

    K/V expanded to Hq heads, the (B, Hq, S_q, S_kv) scores materialised and rounded to q's
    dtype, softmax, matmul. `mask` (S_q, S_kv) is True where a key is hidden (`causal_mask`),
    built by the caller so a timed call does not rebuild it. No empty-row rule: a fully
    masked row gives NaN. Returns (B, Hq, S_q, D) in q.dtype.
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, S_kv, D)
    v = v.repeat_interleave(group, dim=1)  # (B, Hq, S_kv, D)
    scores = (q @ k.transpose(-1, -2)) * sm_scale  # (B, Hq, S_q, S_kv)
    if mask is not None:
        scores.masked_fill_(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, Hq, S_q, D)


def paged_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_size: int, seed: int,
             spare_blocks: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A contiguous (B, Hkv, S, D) cache laid out as a shuffled paged pool (the vLLM layout).

    Returns k_pages, v_pages (num_blocks, block_size, Hkv, D) with num_blocks =
    B * ceil(S / block_size) + spare_blocks, and block_table (B, ceil(S / block_size)) int32:
    a random permutation (torch.randperm seeded with `seed`), so sequence b's p-th block is
    block_table[b, p], as in a fragmented pool. Positions past S in a last block are 0; the
    spare blocks no table names are NaN, so a kernel reading a wrong block shows it.
    """
    B, Hkv, S, D = k_cache.shape
    max_blocks = -(-S // block_size)
    num_blocks = B * max_blocks + spare_blocks
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))[: B * max_blocks]
    block_table = perm.reshape(B, max_blocks).to(torch.int32).to(k_cache.device)
    pad = max_blocks * block_size - S
    pages = []
    for cache in (k_cache, v_cache):
        padded = torch.nn.functional.pad(cache, (0, 0, 0, pad))  # (B, Hkv, max_blocks * bs, D)
        blocks = padded.reshape(B, Hkv, max_blocks, block_size, D).permute(0, 2, 3, 1, 4)  # (B, nb, bs, Hkv, D)
        store = torch.full((num_blocks, block_size, Hkv, D), float("nan"), dtype=cache.dtype, device=cache.device)
        store[block_table.long().reshape(-1)] = blocks.reshape(-1, block_size, Hkv, D)
        pages.append(store)
    return pages[0], pages[1], block_table


def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, causal: bool = False,
                         sm_scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """attention_ref over packed sequences, flash-attn's varlen layout.

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D); cu_seqlens_q / cu_seqlens_k: (num_seqs + 1,)
    int32 prefix sums starting at 0, so sequence s owns rows cu[s]:cu[s+1]. Each sequence
    attends only to itself (causal alignment bottom-right per sequence). Returns (total_q, Hq, D).
    """
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"varlen_attention_ref: cu_seqlens_q has {cu_seqlens_q.numel()} entries, "
                         f"cu_seqlens_k {cu_seqlens_k.numel()}; they must match")
    out = torch.empty_like(q)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        qs = q[cq[s]:cq[s + 1]].transpose(0, 1)[None]  # (1, Hq, S_q, D)
        ks = k[ck[s]:ck[s + 1]].transpose(0, 1)[None]  # (1, Hkv, S_kv, D)
        vs = v[ck[s]:ck[s + 1]].transpose(0, 1)[None]  # (1, Hkv, S_kv, D)
        out[cq[s]:cq[s + 1]] = attention_ref(qs, ks, vs, causal, sm_scale, window)[0].transpose(0, 1)
    return out


def paged_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_table: torch.Tensor, seq_lens: torch.Tensor,
                     sm_scale: float | None = None) -> torch.Tensor:
    """One decode step against a paged KV cache: each query token attends its whole sequence.

    q: (B, Hq, D); k_cache, v_cache: (num_blocks, block_size, Hkv, D);
    block_table: (B, max_blocks) int32, block_table[b, p] = physical block holding tokens
    p*block_size .. (p+1)*block_size - 1 of sequence b; seq_lens: (B,) int32 tokens in the cache
    for each sequence (the new token's K/V already appended). Returns (B, Hq, D) in q.dtype.
    """
    B, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for b in range(B):
        n = int(seq_lens[b])
        blocks = block_table[b, :(n + block_size - 1) // block_size].long()
        kb = k_cache[blocks].reshape(-1, Hkv, D)[:n]  # (n, Hkv, D)
        vb = v_cache[blocks].reshape(-1, Hkv, D)[:n]  # (n, Hkv, D)
        qb = q[b][None, :, None, :]  # (1, Hq, 1, D)
        out[b] = attention_ref(qb, kb.transpose(0, 1)[None], vb.transpose(0, 1)[None],
                               causal=False, sm_scale=sm_scale)[0, :, 0]
    return out
