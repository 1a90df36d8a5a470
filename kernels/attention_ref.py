"""attention: plain-PyTorch references for the Triton kernels in flash_attention.py / flash_decode.py.

Every function computes in fp32 and returns the query's dtype, so a kernel's error
against it is the kernel's own rounding. The math, for one (batch, query head h):

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
                  sm_scale: float | None = None) -> torch.Tensor:
    """softmax(sm_scale * q k^T [+ causal mask]) v in fp32, for (B, H, S, D) tensors.

    q: (B, Hq, S_q, D); k, v: (B, Hkv, S_kv, D) with Hq % Hkv == 0. Causal alignment is
    bottom-right: query i attends keys j <= i + S_kv - S_q. Returns (B, Hq, S_q, D) in q.dtype.
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
    if causal:
        i = torch.arange(S_q, device=q.device)[:, None]
        j = torch.arange(S_kv, device=q.device)[None, :]
        allowed = j <= i + (S_kv - S_q)  # (S_q, S_kv)
    else:
        allowed = torch.ones(S_q, S_kv, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(allowed.any(dim=-1, keepdim=True), probs, 0.0)  # empty rows -> 0, not NaN
    return (probs @ vf).to(q.dtype)  # (B, Hq, S_q, D)


def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, causal: bool = False,
                         sm_scale: float | None = None) -> torch.Tensor:
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
        out[cq[s]:cq[s + 1]] = attention_ref(qs, ks, vs, causal, sm_scale)[0].transpose(0, 1)
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
