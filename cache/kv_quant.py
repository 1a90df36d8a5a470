"""Quantized KV cache values: int8 / int4 keys and values with one scale and zero point per
token, per KV head (per group of `group_size` channels when given).

Math (asymmetric, the weights' grid of quant/rtn.py applied to one token's head vector x):
    maxq = 2^bits - 1, lo = min(x.min(), 0), hi = max(x.max(), 0)
    scale = (hi - lo) / maxq rounded *up* to fp16 (so the range still fits in maxq steps),
    zero = round(-lo / scale) (an integer code, uint8)
    q = clamp(round(x / scale) + zero, 0, maxq) (uint8; int4 codes fill 0..15)
    x' = scale * (q - zero)          |x - x'| <= scale / 2 (+ fp32 rounding)
A cache stores q and (scale, zero): bits/8 bytes per value + 3 bytes per (token, head).

How the model uses it: `install_kv_quant(model, bits)` sets each Attention's `kv_quant`
(model/layers.py), which replaces k (after RoPE) and v by x' before they are attended over
or written to any cache. That is fake quantization on store, and it is exact: scale is fp16
(11 significant bits) and (q - zero) an integer of at most 8 bits, so scale * (q - zero) is an
exactly representable fp32 product (19 bits <= 24), the very value a real int cache
dequantizes to in fp32 (a bf16 model then rounds it to bf16, as a dequantizing kernel writing
bf16 would). Why fake: the rounding is what costs quality and it is reproduced exactly, on every
attention path (SDPA without a cache, the static and the paged cache) with one hook; the cache
buffers keep the model dtype (no memory saved yet): a packed int cache needs attention kernels
that read codes and scales, which is GPU kernel work not done here.
Gradients pass straight through (x + (x' - x).detach()), so quant/spinquant.py trains with it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

KV_BITS = (4, 8)


class KVQuantError(ValueError):
    """A KV quantization request that cannot work (bad bits or group size); one line."""


def check_kv_bits(bits: int) -> int:
    """bits if a KV cache can hold it (4 or 8), else KVQuantError."""
    if bits not in KV_BITS:
        raise KVQuantError(f"unsupported kv_bits={bits!r}; choose one of {KV_BITS} (or None for a float cache)")
    return bits


def _groups(x: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    d = x.shape[-1]
    gs = d if group_size in (None, -1) else group_size
    if gs <= 0 or d % gs:
        raise KVQuantError(f"kv group_size={group_size} does not divide head_dim={d}")
    return x.reshape(*x.shape[:-1], d // gs, gs)


def quantize_kv(x: torch.Tensor, bits: int, group_size: Optional[int] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (..., head_dim) -> (q uint8 (..., G, gs), scale fp16 (..., G, 1), zero uint8 (..., G, 1))."""
    maxq = 2 ** check_kv_bits(bits) - 1
    g = _groups(x.detach().float(), group_size)
    lo = g.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = g.amax(dim=-1, keepdim=True).clamp(min=0)
    s32 = ((hi - lo) / maxq).clamp(min=2.0 ** -24)  # an all-zero group: any positive scale gives q = zero
    s16 = s32.half()
    s16 = torch.where(s16.float() < s32, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
    scale = s16.float()
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zero, 0, maxq)
    return q.to(torch.uint8), s16, zero.to(torch.uint8)


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, shape: torch.Size,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """scale * (q - zero) reshaped to `shape` (..., head_dim) in dtype."""
    return (scale.float() * (q.float() - zero.float())).reshape(shape).to(dtype)


class KVQuantizer(nn.Module):
    """k or v (..., head_dim) -> the values an int`bits` cache returns for them (module docstring)."""

    def __init__(self, bits: int, group_size: Optional[int] = None):
        super().__init__()
        self.bits, self.group_size = check_kv_bits(bits), group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized x in x's dtype; straight-through gradient."""
        q, s, z = quantize_kv(x, self.bits, self.group_size)
        xq = dequantize_kv(q, s, z, x.shape, x.dtype)
        return x + (xq - x).detach() if x.requires_grad else xq

    def extra_repr(self) -> str:
        return f"int{self.bits} per token per head" + (f", group_size={self.group_size}" if self.group_size else "")


def install_kv_quant(model: nn.Module, bits: Optional[int], group_size: Optional[int] = None) -> nn.Module:
    """Set every decoder layer's attention to store `bits`-bit K/V (None: float again); return model."""
    quantizer = None if bits is None else KVQuantizer(bits, group_size)
    if quantizer is not None and group_size not in (None, -1):
        _groups(torch.zeros(model.config.head_dim), group_size)  # a bad group size fails here, once
    for layer in model.model.layers:
        layer.self_attn.kv_quant = quantizer
    return model


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, bits: Optional[int],
                       group_size: Optional[int] = None, float_bytes: int = 2) -> float:
    """Bytes one token's K and V occupy across layers: codes + (fp16 scale, uint8 zero) per group."""
    per_head = head_dim * float_bytes if bits is None else (
        head_dim * bits / 8 + 3 * (head_dim // (group_size or head_dim)))
    return 2 * n_layers * n_kv_heads * per_head
