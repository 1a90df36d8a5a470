"""Building blocks of the Llama decoder: RMSNorm, RoPE, attention, MLP.

Attribute names follow the Hugging Face Llama layout so state_dict keys match the
checkpoint directly (q_proj, k_proj, ..., gate_proj, up_proj, down_proj). Layers are plain
nn.Linear; quantization swaps them on a built model (quant.quantize), fusion concatenates them
(fuse_projections).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops
from model.attention_backend import static_sdpa
from model.config import ModelConfig


def _fuse(module: nn.Module, parts: tuple[str, ...], fused_name: str) -> bool:
    """Concatenate the output rows of module.<parts> (plain bias-free Linears) into module.<fused_name>."""
    linears = [getattr(module, p) for p in parts]
    if not all(type(m) is nn.Linear and m.bias is None for m in linears):
        return False
    w = torch.cat([m.weight.detach() for m in linears], dim=0)
    fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=False)
    setattr(module, fused_name, fused)
    for p in parts:
        delattr(module, p)  # frees the originals unless someone else holds them
        setattr(module, p, None)
    return True


def make_norm(config: ModelConfig) -> nn.Module:
    """The block norm config.norm_type names: RMSNorm, or LayerNorm with bias (Phi-2)."""
    if config.norm_type == "layer":
        return nn.LayerNorm(config.dim, eps=config.norm_eps)
    return RMSNorm(config.dim, config.norm_eps)


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP activation of HF's hidden_act name (model.arch.ACTIVATIONS)."""
    if name == "silu":
        return F.silu
    return lambda x: F.gelu(x, approximate="none" if name == "gelu" else "tanh")


class RMSNorm(nn.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)), normalised in fp32 and cast back (as HF)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of x (kernels.ops picks CUDA, Triton or PyTorch)."""
        return ops.rms_norm(x.contiguous(), self.weight, self.eps)


def rope_inv_freq(config: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) fp32, with Llama-3.1 scaling when configured.

    Same arithmetic as transformers' `_compute_llama3_parameters`: wavelengths shorter
    than original_len / high_freq_factor are kept, those longer than
    original_len / low_freq_factor are divided by `factor`, and the band between is
    interpolated smoothly.
    """
    d = config.rotary_dim  # head_dim unless partial rotary (Phi-2)
    inv_freq = 1.0 / (config.rope_theta ** (
        torch.arange(0, d, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def precompute_rope(config: ModelConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return real-valued (cos, sin) tables, each (seq_len, rotary_dim) fp32, HF rotate-half layout.

    longrope (Phi-3): positions below original_max_position_embeddings use the short factors,
    the others the long ones, and both tables are scaled by attention_factor. transformers picks
    one set for a whole forward (long once any position passes the original length), so the two
    agree exactly while a sequence stays within the original length, and not beyond it.
    """
    pos = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    s = config.rope_scaling
    if s is not None and s["rope_type"] == "longrope":
        d = config.rotary_dim
        base = config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / d)
        short, long = (1.0 / (torch.tensor(s[k], dtype=torch.float32, device=device) * base)
                       for k in ("short_factor", "long_factor"))
        use_short = (pos < s["original_max_position_embeddings"])[:, None]
        freqs = torch.where(use_short, torch.outer(pos, short), torch.outer(pos, long))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * s["attention_factor"], emb.sin() * s["attention_factor"]
    inv_freq = rope_inv_freq(config, device)
    freqs = torch.outer(pos, inv_freq)  # (seq_len, head_dim // 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (seq_len, head_dim)
    return emb.cos(), emb.sin()


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """(..., head_dim) HF sin table (equal halves s, s) -> (-s, s), the table apply_rope takes."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, head_dim) by tables (T, head_dim): cos and signed_sin(sin).

    x * cos + swap_halves(x) * (-s, s) is HF's x * cos + rotate_half(x) * sin to the bit
    (negation is exact) in four kernels (cat, mul, mul, add) where rotate_half with per-call
    table casts took seven. The swap is a cat of two slices, not torch.roll: CUDA's roll
    copies a non-contiguous input (q and k are views of the qkv output) before rolling.
    The tables are cast to x's dtype unless they already match (the model casts them once).
    """
    if cos.dtype != x.dtype:
        cos, sin_signed = cos.to(x.dtype), sin_signed.to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * sin_signed


class Attention(nn.Module):
    """Multi-head attention with grouped-query KV heads over scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.rotary_dim = config.rotary_dim  # < head_dim: RoPE on the first rotary_dim channels only
        qkv_bias = config.qkv_bias
        self.q_proj = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=config.out_bias)
        # StaticKVCache (setup_caches) or cache.PagedLayerCache (setup_paged_caches); None = no cache.
        self.kv_cache: Optional[nn.Module] = None
        # attend(q, k, v, kv_cache, input_pos, mask), bound with the cache (model/attention_backend.py).
        self.attend: Callable[..., torch.Tensor] = static_sdpa
        self.qkv_proj: Optional[nn.Module] = None  # set by fuse(); replaces q/k/v_proj
        # cache.kv_quant.KVQuantizer (install_kv_quant): k after RoPE and v as a 4/8-bit cache stores them.
        self.kv_quant: Optional[nn.Module] = None
        self.qkv_sizes = (config.n_heads * config.head_dim,) + (config.n_kv_heads * config.head_dim,) * 2

    def fuse(self) -> bool:
        """Replace q/k/v_proj by one qkv_proj (concatenated weights); False if not plain Linear."""
        return _fuse(self, ("q_proj", "k_proj", "v_proj"), "qkv_proj")

    def set_cache(self, kv_cache: Optional[nn.Module], attend: Callable[..., torch.Tensor] = static_sdpa) -> None:
        """Attend over kv_cache (None: causal SDPA over the given tokens) with the function chosen at setup."""
        self.kv_cache, self.attend = kv_cache, attend

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: Optional[torch.Tensor], input_pos: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, T, dim); cos/sin (T, rotary_dim); mask bool (T, S) over a static cache; without a
        cache None (causal) or a (T, T) sliding-window mask. Over a paged cache B is 1 and T tokens
        of several requests lie flat."""
        B, T, _ = x.shape
        if self.qkv_proj is not None:  # fused (fuse_projections): one matmul, then views
            qkv = self.qkv_proj(x)
            rope_cache = getattr(self.attend, "rope_cache", None)  # the flash backends' fused write
            if (rope_cache is not None and self.rotary_dim == self.head_dim and cos.dtype == qkv.dtype
                    and self.kv_quant is None and not torch.compiler.is_compiling()):
                # One kernel: RoPE on q and k, k and v stored in the cache; attend reads the cache.
                q = rope_cache(qkv.view(B * T, -1), cos, sin, self.n_heads, self.n_kv_heads, self.kv_cache,
                               input_pos)  # (B * T, n_heads, head_dim)
                y = self.attend(q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2), None, None,
                                self.kv_cache, input_pos, mask)
                return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
            q, k, v = qkv.split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # q: (B, n_heads, T, head_dim); k, v: (B, n_kv_heads, T, head_dim)
        if self.rotary_dim == self.head_dim:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:  # partial rotary (Phi-2): rotate the first rotary_dim channels, pass the rest
            r = self.rotary_dim
            q = torch.cat((apply_rope(q[..., :r], cos, sin), q[..., r:]), dim=-1)
            k = torch.cat((apply_rope(k[..., :r], cos, sin), k[..., r:]), dim=-1)
        if self.kv_quant is not None:  # a quantized KV cache: attend over what it stores
            k, v = self.kv_quant(k), self.kv_quant(v)
        if self.kv_cache is None and mask is not None:  # sliding window without a cache
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif self.kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # the static or paged cache's attention, bound once by setup_caches / setup_paged_caches
            y = self.attend(q, k, v, self.kv_cache, input_pos, mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_heads*head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)); config.gated_mlp False: down(act(up(x)))
    with biases (Phi-2's fc1 = up_proj, fc2 = down_proj)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        bias = config.out_bias
        self.gated = config.gated_mlp
        self.act = activation(config.hidden_act)
        self.gate_proj = nn.Linear(config.dim, config.intermediate_size, bias=bias) if self.gated else None
        self.up_proj = nn.Linear(config.dim, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.dim, bias=bias)
        self.gate_up_proj: Optional[nn.Module] = None  # set by fuse(); replaces gate/up_proj

    def fuse(self) -> bool:
        """Replace gate/up_proj by one gate_up_proj ([gate | up] weights); False if not plain Linear."""
        return self.gated and _fuse(self, ("gate_proj", "up_proj"), "gate_up_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        if not self.gated:
            return self.down_proj(self.act(self.up_proj(x)))
        if self.gate_up_proj is not None:
            return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))
        if x.is_cuda and not torch.compiler.is_compiling():
            # One fused activation kernel over [gate | up] (B, T, 2 * intermediate).
            gate_up = torch.cat((self.gate_proj(x), self.up_proj(x)), dim=-1)
            return self.down_proj(ops.silu_and_mul(gate_up))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
