"""RoPE on q and k fused with the KV-cache write: one launch where the unfused path takes ten.

The unfused attention step runs model.layers.apply_rope on q and on k (cat, mul, mul, add:
four kernels each) and then writes k and v into the cache (two index copies). Here one
program per (token, head) reads its row of the fused qkv projection once, rotates it, and
stores q into a (N, Hq, D) buffer (the layout the flash kernels read) or k and v straight
into their cache slots. vLLM fuses the same pair (rotary_embedding + reshape_and_cache).

Math, per row x of head_dim D with tables cos (T, D) and sin_signed (T, D) in x's dtype
(model.layers.signed_sin: (-s, s)):
    out = round(round(x * cos) + round(swap_halves(x) * sin_signed))
the roundings of apply_rope's three bf16/fp16 ops, so the fused result equals the unfused one
bit for bit (kernels/tests/test_rope_cache.py checks equality, not a tolerance).

Where k and v go: a static cache (B, Hkv, S, D) takes token n = b * T + t at position
input_pos[t] of row b; a paged cache (num_blocks, block_size, Hkv, D) takes token n at the
flat slot slot_mapping[n].
"""

from __future__ import annotations

import torch

from kernels import _triton
from kernels._triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl


def rope_cache_reference(qkv: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, n_heads: int,
                         n_kv_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         input_pos: torch.Tensor | None = None,
                         slot_mapping: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference: (N, (Hq + 2 Hkv) D) qkv rows of B x T tokens -> q (N, Hq, D); k, v written.

    input_pos (T,) for a static cache, slot_mapping (N,) for a paged one (exactly one of them)."""
    from model.layers import apply_rope

    N = qkv.shape[0]
    T = cos.shape[0]
    D = cos.shape[-1]
    q, k, v = qkv.view(N, n_heads + 2 * n_kv_heads, D).split((n_heads, n_kv_heads, n_kv_heads), dim=1)
    rows = torch.arange(N, device=qkv.device) % T
    c, s = cos[rows][:, None], sin_signed[rows][:, None]  # (N, 1, D)
    q, k = apply_rope(q, c, s), apply_rope(k, c, s)
    if slot_mapping is not None:
        hkv, d = k_cache.shape[-2:]
        k_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
        v_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))
    else:
        B = N // T
        k_cache[:B].index_copy_(2, input_pos, k.view(B, T, n_kv_heads, D).transpose(1, 2).to(k_cache.dtype))
        v_cache[:B].index_copy_(2, input_pos, v.view(B, T, n_kv_heads, D).transpose(1, 2).to(v_cache.dtype))
    return q.contiguous()


if HAVE_TRITON:

    @triton.jit
    def _rope_cache_kernel(qkv, stride_row, cos, sin, q_out, k_cache, v_cache, pos_or_slot,
                           T, stride_b, stride_s, stride_h,
                           HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, PAGED: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        t = n % T
        half = D // 2
        d = tl.arange(0, D)
        swap = (d + half) % D
        src = qkv + n * stride_row + h * D
        x = tl.load(src + d)
        xs = tl.load(src + swap)
        c = tl.load(cos + t * D + d)
        s = tl.load(sin + t * D + d)
        # Three roundings, as apply_rope's x * cos + swap * sin in x's dtype.
        a = (x.to(tl.float32) * c.to(tl.float32)).to(x.dtype)
        b = (xs.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
        rot = (a.to(tl.float32) + b.to(tl.float32)).to(x.dtype)
        if h < HQ:
            tl.store(q_out + (n * HQ + h) * D + d, rot)
        else:
            kh = h - HQ
            if PAGED:
                dst = tl.load(pos_or_slot + n) * stride_s + kh * stride_h
            else:
                dst = (n // T) * stride_b + tl.load(pos_or_slot + t) * stride_s + kh * stride_h
            tl.store(k_cache + dst + d, rot.to(k_cache.dtype.element_ty))
            v = tl.load(qkv + n * stride_row + (HQ + HKV + kh) * D + d)
            tl.store(v_cache + dst + d, v.to(v_cache.dtype.element_ty))


# No multiply-add contraction: an FMA would skip the rounding of x * cos that apply_rope does.
_NO_FMA = {} if _triton.interpreting() else {"enable_fp_fusion": False}


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, n_heads: int, n_kv_heads: int,
               k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor | None = None,
               slot_mapping: torch.Tensor | None = None) -> torch.Tensor:
    """Triton face of rope_cache_reference (same arguments): one launch over (N tokens, Hq + Hkv heads).

    qkv rows may be strided (a view of a wider output) but each row must be contiguous; the
    caches are written in place; cos/sin must be in qkv's dtype (the model casts them once)."""
    N, width = qkv.shape
    T, D = cos.shape
    assert width == (n_heads + 2 * n_kv_heads) * D and qkv.stride(1) == 1, (
        f"qkv must be (N, {(n_heads + 2 * n_kv_heads) * D}) with contiguous rows, got {tuple(qkv.shape)} "
        f"strides {qkv.stride()}")
    assert cos.dtype == sin_signed.dtype == qkv.dtype and cos.is_contiguous() and sin_signed.is_contiguous()
    assert (input_pos is None) != (slot_mapping is None), "pass input_pos (static) or slot_mapping (paged)"
    q_out = torch.empty(N, n_heads, D, dtype=qkv.dtype, device=qkv.device)
    if N == 0:
        return q_out
    if slot_mapping is not None:  # (num_blocks, block_size, Hkv, D): flat slot * (Hkv * D)
        assert k_cache.is_contiguous() and v_cache.is_contiguous()
        args = (slot_mapping, T, 0, n_kv_heads * D, D)
    else:  # (B, Hkv, S, D) rows of a static cache
        assert N % T == 0 and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
        args = (input_pos, T, k_cache.stride(0), k_cache.stride(2), k_cache.stride(1))
    _rope_cache_kernel[(N, n_heads + n_kv_heads)](
        qkv, qkv.stride(0), cos, sin_signed, q_out, k_cache, v_cache, *args,
        HQ=n_heads, HKV=n_kv_heads, D=D, PAGED=slot_mapping is not None, num_warps=1 if D <= 64 else 2,
        **_NO_FMA)
    return q_out
