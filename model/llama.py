"""The Llama decoder, configured for the other architectures of model/arch.py (Mistral, Qwen2,
Phi-3, Phi-2, Mixtral). State-dict keys equal Hugging Face's LlamaForCausalLM keys.

Sampling, caching policy, quantization and loading live elsewhere and act on a
built model; this file is only the network.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cache.static_cache import StaticKVCache
from kernels import ops
from model import decode_attention, masks
from model.attention_backend import PAGED, choose_attention, static_attend
from model.config import ModelConfig
from model.layers import MLP, Attention, make_norm, precompute_rope, signed_sin
from model.moe import MoE


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MoE(config) if config.n_experts else MLP(config)
        self.input_layernorm = make_norm(config)
        # Phi-2's parallel block: attention and MLP both read input_layernorm(x); no second norm.
        self.parallel = config.parallel_block
        if not self.parallel:
            self.post_attention_layernorm = make_norm(config)

    def forward(self, x, cos, sin, mask, input_pos):
        """x (B, T, dim) -> (B, T, dim)."""
        if self.parallel:
            h = self.input_layernorm(x)
            return x + self.self_attn(h, cos, sin, mask, input_pos) + self.mlp(h)
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return h + self.mlp(self.post_attention_layernorm(h))

    def forward_residual(self, x, residual, cos, sin, mask, input_pos):
        """Inference form (as vLLM's): the residual stream rides beside x and each norm is fused
        with the add before it. (x, residual) -> (mlp_out, residual); residual None on layer 0.
        Same arithmetic as forward; residual is updated in place, so no autograd here."""
        n1, n2 = self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            residual, h = x, n1(x)
        else:
            h = ops.fused_add_rms_norm(x, residual, n1.weight, n1.eps)  # residual += x
        a = self.self_attn(h, cos, sin, mask, input_pos)
        h = ops.fused_add_rms_norm(a, residual, n2.weight, n2.eps)
        return self.mlp(h), residual


class Decoder(nn.Module):
    """Embedding, blocks and final norm: the HF `model.` prefix."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = make_norm(config)


class Transformer(nn.Module):
    """Llama/Mistral causal LM: input_ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=config.out_bias)
        self.tie_weights()
        # RoPE tables are built lazily on the weights' device (never here), sized to
        # the cache length once caches exist, else to config.max_seq_len.
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)
        self.max_batch_size = -1
        self.max_seq_len = -1  # cache length; -1 means no caches installed
        self.paged_kv = None  # cache.PagedKVCache installed by setup_paged_caches (the engine)

    def tie_weights(self) -> None:
        """Make lm_head share embed_tokens' weight when the config ties them (re-run after load)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: Optional[torch.dtype] = None,
                     device=None, attention: Optional[str] = None) -> str:
        """Install a StaticKVCache in every layer and build RoPE tables for max_seq_len.

        attention ("auto", "sdpa", "flash"; None reads $LAB_ATTENTION) picks the one-token
        attention once, here (model/attention_backend.py); returns the name bound ("flash"/"sdpa").
        """
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} exceeds the model context "
                             f"config.max_seq_len={self.config.max_seq_len}")
        weight = self.model.embed_tokens.weight
        dtype = dtype or weight.dtype
        device = device or weight.device
        self.remove_caches()  # old caches go before new ones are allocated
        caches = [StaticKVCache(max_batch_size, self.config.n_kv_heads, max_seq_len, self.config.head_dim,
                                dtype=dtype, device=device) for _ in self.model.layers]
        name = choose_attention(attention, caches[0].k_cache, weight.dtype, self.config.sliding_window)
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        for layer, cache in zip(self.model.layers, caches):
            layer.self_attn.set_cache(cache, static_attend(name, self.config.sliding_window))
        self.setup_rope(max_seq_len, device)
        return name

    def setup_paged_caches(self, paged_kv, attention: Optional[str] = None):
        """Attend over a cache.PagedKVCache: each layer gets its view and the attention face chosen
        here, once (attention as in setup_caches). forward then takes a flat batch (1, N) whose
        addressing the runner binds with paged_kv.bind(meta) after meta.plan = face.plan(meta).
        Returns the face (model.paged_attention.GatherFace or FlashFace)."""
        face = PAGED[choose_attention(attention, paged_kv.k[0], self.model.embed_tokens.weight.dtype,
                                      self.config.sliding_window)](paged_kv.block_size)
        face.window = self.config.sliding_window
        self.remove_caches()
        self.paged_kv = paged_kv
        for layer, view in zip(self.model.layers, paged_kv.layer_views()):
            layer.self_attn.set_cache(view, face)
        self.setup_rope(None, paged_kv.k[0].device)
        return face

    def setup_rope(self, max_seq_len: Optional[int] = None, device=None) -> None:
        """Build the RoPE cos and signed sin tables (fp32) for positions < max_seq_len (default config's).

        forward builds them on first use; call this (or setup_caches) before
        torch.export / torch.compile so tracing never sees the lazy path.
        """
        device = device or self.model.embed_tokens.weight.device
        cos, sin = precompute_rope(self.config, max_seq_len or self.config.max_seq_len, device)
        self.rope_cos, self.rope_sin = cos, signed_sin(sin)  # apply_rope's tables

    def remove_caches(self) -> None:
        """Drop the KV caches; forward goes back to plain causal attention."""
        for layer in self.model.layers:
            layer.self_attn.set_cache(None)
        self.max_batch_size = self.max_seq_len = -1
        self.paged_kv = None
        self.rope_cos = self.rope_sin = None

    def forward(self, input_ids: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                output_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return logits (B, T, vocab_size) in the weights' dtype (T = len(output_index) if given).

        input_ids: (B, T) long. input_pos: (T,) long positions of these tokens.
        With caches installed input_pos is required; attention then covers every
        cached position <= each token's position. Without caches attention is causal
        over the given tokens, at positions input_pos (default 0..T-1).
        With a paged cache (setup_paged_caches) B is 1, T tokens of several requests lie
        flat, and input_pos holds each token's own position. output_index (K,) long picks
        the rows that get logits (the engine's last token per request).
        RoPE tables are built on first use; call setup_rope/setup_caches before export.
        """
        assert input_ids.dim() == 2, f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}"
        B, T = input_ids.shape
        decode_attention.new_forward()
        cached = self.max_seq_len > 0
        if input_pos is None:
            assert not cached and self.paged_kv is None, (
                "input_pos (T,) is required once caches are installed")
            input_pos = torch.arange(T, device=input_ids.device)
        assert input_pos.shape == (T,), f"input_pos must be ({T},), got {tuple(input_pos.shape)}"
        if (self.rope_cos is None or self.rope_cos.device != input_ids.device
                or self.rope_cos.dtype != torch.float32):  # .to(dtype) may have cast them
            self.setup_rope(self.max_seq_len if cached else None, input_ids.device)
        cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]  # (T, head_dim) fp32
        mask = None  # None = causal over the T given tokens
        window = self.config.sliding_window
        if cached or (window is not None and self.paged_kv is None):
            # over a static cache the keys are its slots; without one, the given tokens (window only)
            key_pos = torch.arange(self.max_seq_len, device=input_ids.device) if cached else input_pos
            mask = masks.visible_keys(key_pos, input_pos, window)  # (T, max_seq_len or T) bool
        x = self.model.embed_tokens(input_ids)  # (B, T, dim)
        pos = input_pos if cached else None
        plain = self.config.norm_type != "rms" or self.config.parallel_block  # no fused add + RMSNorm
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or plain:
            # training, autograd or autocast (mixed dtypes in the residual): the plain pre-norm blocks
            for layer in self.model.layers:
                x = layer(x, cos, sin, mask, pos)
            if output_index is not None:
                x = x[:, output_index]  # (B, K, dim)
            return self.lm_head(self.model.norm(x))  # (B, T or K, vocab_size)
        residual = None  # inference: fused add + RMSNorm between blocks
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once, not per layer (one residual dtype here)
        for layer in self.model.layers:
            x, residual = layer.forward_residual(x, residual, cos, sin, mask, pos)
        if output_index is not None:
            x, residual = x[:, output_index].contiguous(), residual[:, output_index].contiguous()
        norm = self.model.norm
        return self.lm_head(ops.fused_add_rms_norm(x, residual, norm.weight, norm.eps))

    def fuse_projections(self) -> int:
        """Inference only: one qkv matmul and one gate_up matmul per layer (fewer, larger GEMVs).

        State-dict keys change (qkv_proj, gate_up_proj), so fuse after loading; quantized or
        otherwise non-plain Linears are left alone. Returns how many modules were fused.
        """
        n = 0
        for layer in self.model.layers:
            n += layer.self_attn.fuse() + layer.mlp.fuse()
        return n
