"""Which attention a layer runs over its cache: chosen once, where the caches are set up.

`Transformer.setup_caches` and `setup_paged_caches` take `attention=` (else they read
$LAB_ATTENTION, once; unset means auto) and bind one function per layer:
  auto   the flash kernels where they run, else SDPA
  sdpa   the readable path: masked SDPA over the static cache, the gather face over the paged cache
  flash  the flash kernels, or a ValueError at setup saying why they cannot run
The flash kernels run on a Triton-capable device (CUDA, or the CPU under TRITON_INTERPRET=1)
for fp16/bf16 caches in the activations' dtype with head_dim 64 or 128. A bad value is one
ValueError at setup; nothing is read or sniffed per layer per step.

Every bound function has one signature: attend(q, k, v, cache, input_pos, mask) -> (B, Hq, T, D),
with q (B, Hq, T, D) and k, v (B, Hkv, T, D) after RoPE.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F

from kernels import _triton
from model import decode_attention
from model.paged_attention import FlashFace, GatherFace

ENV = "LAB_ATTENTION"
CHOICES = ("auto", "sdpa", "flash")
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_HEAD_DIMS = (64, 128)

def choose_attention(choice: Optional[str], cache: torch.Tensor, compute_dtype: torch.dtype,
                     window: Optional[int] = None) -> str:
    """"flash" or "sdpa" for a cache tensor (..., head_dim) read by activations of compute_dtype.

    choice None reads $LAB_ATTENTION (unset: "auto"). Raises ValueError for a value not in
    CHOICES, or for "flash" where the kernels cannot run. A sliding-window model (window not None)
    takes the flash kernels too: they take the window and skip the blocks before it.
    """
    source = "attention" if choice is not None else ENV
    choice = choice if choice is not None else os.environ.get(ENV, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES)}, got {choice!r}")
    why_not = _flash_unavailable(cache, compute_dtype)
    if choice == "flash" and why_not:
        raise ValueError(f"{source}=flash, but the flash kernels cannot run here: {why_not}")
    return "flash" if choice != "sdpa" and not why_not else "sdpa"


def _flash_unavailable(cache: torch.Tensor, compute_dtype: torch.dtype) -> str:
    """Why the flash kernels cannot read this cache ("" when they can)."""
    if not _triton.can_run(cache):
        return f"Triton cannot run on {cache.device} (a CUDA device, or the CPU with TRITON_INTERPRET=1)"
    if cache.dtype not in FLASH_DTYPES or cache.dtype != compute_dtype:
        return f"the cache is {cache.dtype} for {compute_dtype} activations; both must be fp16 or both bf16"
    if cache.shape[-1] not in FLASH_HEAD_DIMS:
        return f"head_dim is {cache.shape[-1]}, not one of {FLASH_HEAD_DIMS}"
    return ""


def static_sdpa(q, k, v, cache, input_pos, mask) -> torch.Tensor:
    """Write k, v into a StaticKVCache, then masked SDPA over its whole length (GQA, no expand)."""
    k, v = cache.update(input_pos, k, v)  # (B, Hkv, S, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def static_flash(q, k, v, cache, input_pos, mask, window: Optional[int] = None) -> torch.Tensor:
    """static_sdpa, but a one-token step reads only the valid prefix (with a sliding window, only
    its last `window` tokens) through kernels.flash_decode.

    k, v None: static_flash.rope_cache already wrote them (model.layers.Attention). torch.export
    keeps SDPA: the runtimes of the exports built on it cannot call a Python op.
    """
    if k is None:
        B = q.shape[0]
        k, v = cache.k_cache[:B], cache.v_cache[:B]
    else:
        k, v = cache.update(input_pos, k, v)
    if q.shape[2] != 1 or torch.compiler.is_exporting():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return decode_attention.attend(q, k, v, input_pos, window)


def _static_rope_cache(qkv, cos, sin, n_heads, n_kv_heads, cache, input_pos) -> torch.Tensor:
    """RoPE + the StaticKVCache write in one kernel (kernels.rope_cache); returns q (B * T, Hq, D)."""
    from kernels.rope_cache import rope_cache

    return rope_cache(qkv, cos, sin, n_heads, n_kv_heads, cache.k_cache, cache.v_cache, input_pos=input_pos)


static_flash.rope_cache = _static_rope_cache  # the flash backend fuses RoPE with its cache write


STATIC = {"sdpa": static_sdpa, "flash": static_flash}  # name -> attend over a StaticKVCache


def static_attend(name: str, window: Optional[int] = None):
    """STATIC[name] for a model with sliding window `window` (None: none); the SDPA path's window
    is in the mask the model builds, the flash path's a kernel argument bound here."""
    if name == "flash" and window:
        bound = functools.partial(static_flash, window=window)
        bound.rope_cache = _static_rope_cache
        return bound
    return STATIC[name]
PAGED = {"sdpa": GatherFace, "flash": FlashFace}  # name -> face class (of block_size) over a PagedKVCache
