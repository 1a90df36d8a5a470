"""One-token attention over the contiguous StaticKVCache through our split-KV Triton kernel.

A decode step (T = 1) with SDPA and a position mask reads the whole max_seq_len cache and,
with grouped-query heads and a mask, runs PyTorch's math path: about ten small kernels per
layer. kernels.flash_decode reads only the valid prefix in two launches, takes the GQA
heads without expanding K/V, and is graph-safe (lengths live on the device). It is wrapped
as the custom op lab::flash_decode so torch.compile keeps it as one opaque call. Exports
(torch.export, AOTInductor, ONNX) keep SDPA: their runtimes cannot call a Python op.
Whether a model uses it is chosen once at setup_caches (model/attention_backend.py;
LAB_ATTENTION=sdpa turns it off, to compare or to rule it out).
"""

from __future__ import annotations

import threading
from typing import Optional

import torch


@torch.library.custom_op("lab::flash_decode", mutates_args=())
def _flash_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     seq_lens: torch.Tensor, window: int = 0) -> torch.Tensor:
    from kernels.flash_decode import flash_decode

    return flash_decode(q, k_cache, v_cache, seq_lens, window=window)


@_flash_decode_op.register_fake
def _(q, k_cache, v_cache, seq_lens, window=0):
    return torch.empty_like(q)


_memo = threading.local()  # .entry = (input_pos, B, seq_lens): this thread's current forward's lengths


def new_forward() -> None:
    """Forget the last forward's lengths (called at the start of every Transformer.forward)."""
    _memo.entry = None


def _seq_lens(input_pos: torch.Tensor, B: int) -> torch.Tensor:
    """(B,) int32 input_pos + 1, built once per forward (the first layer) rather than per layer.

    Transformer.forward calls new_forward() first, so nothing outlives one forward (whose
    input_pos nobody writes); within it the memo (one per thread: servers run models from several
    threads) is keyed on the input_pos tensor. Under CUDA-graph
    capture the first layer's kernels are captured and the later layers read their output."""
    entry = getattr(_memo, "entry", None)
    if entry is not None and entry[0] is input_pos and entry[1] == B and not torch.compiler.is_compiling():
        return entry[2]
    seq_lens = (input_pos.to(torch.int32) + 1).expand(B).contiguous()
    _memo.entry = (input_pos, B, seq_lens)
    return seq_lens


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor,
           window: Optional[int] = None) -> torch.Tensor:
    """q (B, Hq, 1, D) at position input_pos (1,) over caches (B, Hkv, S, D) -> (B, Hq, 1, D);
    window: sliding window (None = none), only the last `window` cached tokens are read."""
    B = q.shape[0]
    seq_lens = _seq_lens(input_pos, B)
    q1 = q[:, :, 0].contiguous()
    if torch.compiler.is_compiling():  # an opaque op for Inductor
        return _flash_decode_op(q1, k_cache, v_cache, seq_lens, window or 0)[:, :, None]
    from kernels.flash_decode import flash_decode  # eager: skip the custom op's dispatch cost

    return flash_decode(q1, k_cache, v_cache, seq_lens, window=window)[:, :, None]
