"""Attention sinks (StreamingLLM, Xiao et al. 2023): keep the first `sinks` tokens plus a rolling
window of the last `window` tokens, so a model generates and scores text past its context.

The cache holds at most sinks + window entries. Keys are stored un-rotated and rotated at read
by their slot in the cache (0 .. n-1), as StreamingLLM does: positions never exceed the cache
size, whatever the stream length. When the cache is full, the oldest non-sink entry is evicted
and the newer ones shift down one slot. sinks = 0 is plain window attention with the same
re-positioning, the paper's failing baseline.

Use: setup_sink_caches(model, sinks, window), then feed tokens with `slot_positions`; or
stream_nll for the log-likelihood of a long token stream (bench.perplexity --sinks).
Eager, batch 1, CPU or GPU; the SDPA path (no flash kernels, no export).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import apply_rope


class SinkKVCache(nn.Module):
    """One layer's sinks + rolling-window K/V. update(input_pos, k, v) -> (K, V) over cap slots."""

    def __init__(self, sinks: int, window: int, n_kv_heads: int, head_dim: int, cos: torch.Tensor,
                 sin_signed: torch.Tensor, dtype, device):
        super().__init__()
        self.sinks, self.cap = sinks, sinks + window
        shape = (1, n_kv_heads, self.cap, head_dim)
        self.register_buffer("k_raw", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.cos, self.sin = cos[:self.cap], sin_signed[:self.cap]  # (cap, rotary_dim) fp32
        self.n = 0  # entries held

    def _rotate(self, k: torch.Tensor, pos: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """RoPE of k (1, H, T, D) at slot positions pos (T,); inverse un-rotates (rotation by -theta)."""
        r = self.cos.shape[-1]
        sin = -self.sin[pos] if inverse else self.sin[pos]
        return torch.cat((apply_rope(k[..., :r], self.cos[pos], sin), k[..., r:]), dim=-1)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store T new entries (k rotated at input_pos, which must be slots n .. n+T-1 after eviction)."""
        T = k.shape[2]
        assert T <= self.cap - self.sinks or self.n == 0, "a chunk larger than the window"
        drop = max(0, self.n + T - self.cap)
        if drop:  # evict the oldest window entries; newer ones move down `drop` slots
            s, n = self.sinks, self.n
            self.k_raw[:, :, s:n - drop] = self.k_raw[:, :, s + drop:n].clone()
            self.v[:, :, s:n - drop] = self.v[:, :, s + drop:n].clone()
            self.n -= drop
        want = torch.arange(self.n, self.n + T, device=input_pos.device)
        assert torch.equal(input_pos, want), f"positions {input_pos.tolist()} are not the next slots {want.tolist()}"
        self.k_raw[:, :, self.n:self.n + T] = self._rotate(k, input_pos, inverse=True).to(self.k_raw.dtype)
        self.v[:, :, self.n:self.n + T] = v.to(self.v.dtype)
        self.n += T
        slots = torch.arange(self.cap, device=k.device)
        return self._rotate(self.k_raw, slots), self.v


def sink_attend(q, k, v, cache: SinkKVCache, input_pos, mask) -> torch.Tensor:
    """The attend function over a SinkKVCache (model/attention_backend.py's signature)."""
    k_all, v_all = cache.update(input_pos, k, v)
    return F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=mask, enable_gqa=True)


def setup_sink_caches(model, sinks: int, window: int) -> list[SinkKVCache]:
    """Install a SinkKVCache in every layer of `model` (batch 1); returns them."""
    if sinks < 0 or window < 1:
        raise ValueError(f"sinks must be >= 0 and window >= 1, got sinks={sinks}, window={window}")
    cap = sinks + window
    if cap > model.config.max_seq_len:
        raise ValueError(f"sinks + window = {cap} exceeds the model context {model.config.max_seq_len}")
    cfg, weight = model.config, model.model.embed_tokens.weight
    model.remove_caches()
    model.setup_rope(cap, weight.device)
    caches = []
    for layer in model.model.layers:
        cache = SinkKVCache(sinks, window, cfg.n_kv_heads, cfg.head_dim, model.rope_cos, model.rope_sin,
                            weight.dtype, weight.device)
        layer.self_attn.set_cache(cache, sink_attend)
        caches.append(cache)
    model.max_batch_size, model.max_seq_len = 1, cap
    return caches


def slot_positions(n_held: int, n_new: int, cap: int, device=None) -> torch.Tensor:
    """The input_pos of n_new tokens fed after n_held entries: their slots once room is made."""
    start = min(n_held, cap - n_new)
    return torch.arange(start, start + n_new, device=device)


@torch.no_grad()
def stream_nll(model, ids: list[int], sinks: int, window: int, prefill: Optional[int] = None) -> dict:
    """Negative log-likelihood of tokens 1..L-1 of `ids`, each predicted from the sinks + window
    cache of everything before it (the first min(L, prefill or sinks + window) tokens in one chunk,
    then one token at a time). Returns {"nll", "perplexity", "tokens_scored"}."""
    device = model.model.embed_tokens.weight.device
    caches = setup_sink_caches(model, sinks, window)
    cap = sinks + window
    x = torch.tensor(ids, device=device)
    first = min(len(ids), prefill or cap)
    total, n = 0.0, 0
    try:
        logits = model(x[None, :first], slot_positions(0, first, cap, device))[0]  # (first, V)
        lp = F.log_softmax(logits.float(), dim=-1)
        total -= lp[:-1].gather(1, x[1:first, None]).sum().item()
        n += first - 1
        last = lp[-1]
        for t in range(first, len(ids)):
            total -= last[x[t]].item()
            n += 1
            logits = model(x[None, t:t + 1], slot_positions(caches[0].n, 1, cap, device))[0]
            last = F.log_softmax(logits[-1].float(), dim=-1)
    finally:
        model.remove_caches()
    nll = total / max(n, 1)
    return {"nll": nll, "perplexity": float(torch.tensor(nll).exp()), "tokens_scored": n}
