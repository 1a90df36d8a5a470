"""One decoder step with the KV cache as explicit tensors: the graph AOTI and ONNX export.

    logits, k_cache, v_cache = KVCacheStep(model)(ids, input_pos, k_cache, v_cache)

ids (B, T) long; input_pos (T,) long, the positions of these tokens;
k_cache, v_cache (n_layers, B, n_kv_heads, S, head_dim) in the model dtype, returned
with positions input_pos written (functionally: new tensors, so a runtime without
in-place buffer mutation, such as onnxruntime, can carry them from call to call).
logits (B, T, vocab). T = prompt length for prefill, 1 for decode.

A thin wrapper over the model's own modules (norms, projections, MLP, rope tables):
the same arithmetic as Transformer.forward with a StaticKVCache, except that the kv
heads are repeated explicitly instead of SDPA's enable_gqa, which exporters handle
unevenly. `model.setup_caches(B, S)` must run first: it builds the rope tables the
graph reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import apply_rope


class KVCacheStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        assert model.max_seq_len > 0, "call model.setup_caches(max_batch, max_len) before wrapping"
        self.model = model

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor):
        m, cfg = self.model, self.model.config
        B, T = ids.shape
        S = k_cache.shape[3]
        H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos, sin = m.rope_cos[input_pos], m.rope_sin[input_pos]  # (T, D)
        mask = torch.arange(S, device=ids.device)[None, :] <= input_pos[:, None]  # (T, S) bool
        x = m.model.embed_tokens(ids)  # (B, T, dim)
        new_k, new_v = [], []
        for i, layer in enumerate(m.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = attn.k_proj(h).view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
            v = attn.v_proj(h).view(B, T, KV, D).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kc = k_cache[i].index_copy(2, input_pos, k.to(k_cache.dtype))  # (B, KV, S, D)
            vc = v_cache[i].index_copy(2, input_pos, v.to(v_cache.dtype))
            new_k.append(kc)
            new_v.append(vc)
            kr = kc.repeat_interleave(H // KV, dim=1)  # (B, H, S, D)
            vr = vc.repeat_interleave(H // KV, dim=1)
            y = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)  # (B, H, T, D)
            y = y.transpose(1, 2).reshape(B, T, H * D)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = m.lm_head(m.model.norm(x))  # (B, T, vocab)
        return logits, torch.stack(new_k), torch.stack(new_v)


def empty_caches(model: nn.Module, batch: int, max_len: int, dtype=None):
    """Zero (n_layers, B, n_kv_heads, max_len, head_dim) k and v caches for KVCacheStep."""
    cfg = model.config
    dtype = dtype or model.model.embed_tokens.weight.dtype
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)


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


def eager_greedy(model: nn.Module, prompt: list[int], n_new: int) -> tuple[list[int], list]:
    """The reference: our model's own StaticKVCache path (ids, per-step last logits)."""
    model.setup_caches(1, len(prompt) + n_new)
    step = lambda ids, pos, k, v: (model(ids, pos), k, v)  # noqa: E731
    device = model.model.embed_tokens.weight.device
    with torch.no_grad():
        return greedy_with_step(step, prompt, n_new, None, None, device=device)
