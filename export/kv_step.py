"""The decoder step every export compiles: Transformer.forward with the KV cache as explicit tensors.

    logits, k_cache, v_cache = KVCacheStep(model)(ids, input_pos, k_cache, v_cache)

ids (B, T) long; input_pos (T,) long, the positions of these tokens;
k_cache, v_cache (n_layers, B, n_kv_heads, S, head_dim) in the model dtype, returned
with positions input_pos written (functionally: new tensors, so a runtime without
in-place buffer mutation, such as onnxruntime, can carry them from call to call).
logits (B, T, vocab). T = prompt length for prefill, 1 for decode.

No second decoder: the step installs a cache/functional_cache.py FunctionalKVCache in
every layer around one `model(ids, input_pos)` call, so exports trace the model's own
forward (fused projections, the residual form, SDPA with GQA) and can never drift from
it. `model.setup_caches(B, S)` must run first: it fixes S (the mask's width) and builds
the rope tables the graph reads. Exports keep SDPA: model/decode_attention.py's flash
path is off while torch.export (and torch.onnx's dynamo exporter on top of it) traces.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from cache.functional_cache import FunctionalKVCache


@contextmanager
def functional_caches(model: nn.Module, k_cache: torch.Tensor, v_cache: torch.Tensor):
    """Give layer i a FunctionalKVCache over k_cache[i], v_cache[i] inside the block; yield the caches.

    The layers' previous caches (the StaticKVCache of setup_caches) are put back on exit.
    """
    attns = [layer.self_attn for layer in model.model.layers]
    assert k_cache.shape[0] == len(attns), f"caches hold {k_cache.shape[0]} layers, the model {len(attns)}"
    saved = [a.kv_cache for a in attns]
    caches = [FunctionalKVCache(k, v) for k, v in zip(k_cache.unbind(0), v_cache.unbind(0))]
    for a, c in zip(attns, caches):
        a.kv_cache = c
    try:
        yield caches
    finally:
        for a, c in zip(attns, saved):
            a.kv_cache = c


class KVCacheStep(nn.Module):
    """(ids, input_pos, k_cache, v_cache) -> (logits, k_cache, v_cache) over the model's own forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        assert model.max_seq_len > 0, "call model.setup_caches(max_batch, max_len) before wrapping"
        self.model = model

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor):
        """One prefill (T > 1) or decode (T = 1) step; shapes in the module docstring."""
        S = self.model.max_seq_len
        assert k_cache.shape[3] == S, f"cache length {k_cache.shape[3]} != setup_caches length {S}"
        with functional_caches(self.model, k_cache, v_cache) as caches:
            logits = self.model(ids, input_pos)  # (B, T, vocab)
        k = torch.stack([c.k_cache for c in caches])  # (n_layers, B, n_kv_heads, S, head_dim)
        v = torch.stack([c.v_cache for c in caches])
        return logits, k, v


def empty_caches(model: nn.Module, batch: int, max_len: int, dtype=None, device=None):
    """Zero (n_layers, B, n_kv_heads, max_len, head_dim) k and v caches for KVCacheStep."""
    cfg = model.config
    weight = model.model.embed_tokens.weight
    dtype, device = dtype or weight.dtype, device or weight.device
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)


def greedy_with_step(step, prompt: list[int], n_new: int, k_cache, v_cache,
                     device="cpu") -> tuple[list[int], list]:
    """Greedy decode with a (ids, pos, k, v) -> (logits, k, v) callable; returns (ids, per-step logits).

    The caches are threaded through untouched, so the callable may use any array type.
    """
    ids = torch.tensor([prompt], device=device)
    pos = torch.arange(len(prompt), device=device)
    out, all_logits = [], []
    for i in range(n_new):
        logits, k_cache, v_cache = step(ids, pos, k_cache, v_cache)
        logits = torch.as_tensor(logits)  # onnxruntime returns numpy arrays
        all_logits.append(logits[0, -1].float().cpu())
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        ids = torch.tensor([[nxt]], device=device)
        pos = torch.tensor([len(prompt) + i], device=device)
    return out, all_logits


def eager_step(model: nn.Module, max_len: int):
    """The reference step: (ids, pos, k, v) -> (logits, k, v) over the model's own StaticKVCache.

    k, v pass through unused (the model keeps its cache); inference mode (no grad).
    """
    model.setup_caches(1, max_len)
    device = model.model.embed_tokens.weight.device

    @torch.no_grad()
    def step(ids, pos, k, v):
        return model(ids.to(device), pos.to(device)), k, v

    return step


def eager_greedy(model: nn.Module, prompt: list[int], n_new: int) -> tuple[list[int], list]:
    """The reference greedy run: our model's own StaticKVCache path (ids, per-step last logits)."""
    device = model.model.embed_tokens.weight.device
    return greedy_with_step(eager_step(model, len(prompt) + n_new), prompt, n_new, None, None,
                            device=device)
