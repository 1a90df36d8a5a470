"""fused_moe: a Mixtral MoE layer as two grouped GEMMs over tokens sorted by expert (Triton).

Math (model/moe.py's moe_reference is the per-expert loop twin): for token t routed to experts
e_1..e_k with weights p_1..p_k,  y_t = sum_j p_j * W2[e_j] (silu(W1[e_j] x_t) * W3[e_j] x_t),
with w13 = [W1 | W3] (E, 2I, H) and w2 (E, H, I).

Plan (the shape of vLLM's fused_moe, written from its description, not its code):
1. align_by_expert: the N*k (token, pick) slots sorted by expert, each expert's run padded to
   a multiple of BLOCK_M with a sentinel slot (N*k), and the expert of every BLOCK_M block.
2. GEMM 1, one launch: block b of sorted slots reads its tokens' rows of x and expert
   expert_of_block[b]'s w13 -> gate_up (N*k, 2I); each expert's weights are read once per
   (M block, N block), not once per token.
3. silu_and_mul (kernels.ops) -> (N*k, I).
4. GEMM 2, one launch: the slots' rows times their expert's w2, scaled by the routing weight
   in fp32 before the one rounding -> (N*k, H); then the k picks of each token are summed.
fp32 inputs use IEEE fp32 dots (no TF32), so fp32 agrees with the loop to round-off.

Tiles by token count (the way vLLM's tuned fused_moe tables for E=8, N=14336 on H100/H200 go,
re-derived here, not copied): few tokens are a weight stream, so BLOCK_M = 16 (tl.dot's least),
wide K tiles (128-256) and deep pipelines (4-5 stages) keep many weight bytes in flight;
from ~128 tokens each expert holds 32+ slots, so BLOCK_M 64-128 with BLOCK_N 128-256 reads each
expert's weights once per 64-128 tokens instead of once per 16 (BLOCK_M = 16 at 512 tokens read
them ~8x: why the fused layer lost to the loop there), and GROUP_M swizzles the launch so
neighbouring programs share a weight tile in L2. `config_for` picks from CONFIGS by token bucket;
on CUDA, the first call of each (bucket, shape, dtype) times the bucket's candidates once and
keeps the fastest (`_TUNED`; LAB_MOE_TUNE=0 takes the first candidate untimed).
gate/up are one GEMM over w13 (as vLLM); SiLU-and-mul is its own small kernel on (N*k, 2I).
align_by_expert makes no host sync: it sizes its output for the worst case (N*k + E*(BLOCK_M-1)
slots) and marks the unused trailing blocks with expert -1, which the kernel skips.
"""

from __future__ import annotations

import os

import torch

from kernels._triton import HAVE_TRITON
from kernels.flash_attention import interpret_upcast

if HAVE_TRITON:
    import triton
    import triton.language as tl

BLOCK_M = 16  # the interpreter's (and the smallest) slots per block; each expert's run is padded to a multiple


def align_by_expert(ids: torch.Tensor, n_experts: int, block_m: int = BLOCK_M):
    """ids (N, k) expert of each pick -> (sorted_slots (P,), expert_of_block (P // block_m,)).

    sorted_slots lists the flat slots n * k + j grouped by expert (stable), each group padded to
    a multiple of block_m with N * k (a slot no kernel reads or writes). P is the worst case
    (N*k rounded up per expert, no device-to-host sync); blocks past the last expert's run hold
    only N * k and have expert -1."""
    flat = ids.reshape(-1)
    total = flat.numel()
    device = ids.device
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    counts = torch.zeros(n_experts, dtype=torch.long, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded  # where each expert's run begins
    num_blocks = (total + block_m - 1) // block_m + n_experts  # >= sum(padded) / block_m
    sorted_slots = torch.full((num_blocks * block_m,), total, dtype=torch.int32, device=device)
    group_start = torch.cumsum(counts, 0) - counts
    expert_sorted = flat[order]
    rank = torch.arange(total, device=device) - group_start[expert_sorted]  # index within its group
    sorted_slots[starts[expert_sorted] + rank] = order.to(torch.int32)
    block_start = torch.arange(num_blocks, device=device) * block_m
    expert_of_block = torch.searchsorted(ends, block_start, right=True)  # the run holding the block
    expert_of_block = torch.where(block_start < ends[-1], expert_of_block, -1)
    return sorted_slots, expert_of_block.to(torch.int32)


# Candidate tiles per token bucket (bucket = next power of two of the token count, capped at 512):
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). The first is the untimed default.
CONFIGS = {
    # 1-4 tokens touch 2-8 experts: the down projection (N = H = 4096) has only
    # experts x H / BLOCK_N programs, so the narrow-N candidates keep every SM streaming there.
    1: [(16, 128, 128, 1, 4, 5), (16, 64, 256, 1, 4, 4), (16, 32, 256, 1, 4, 4)],
    4: [(16, 128, 128, 1, 4, 5), (16, 64, 128, 1, 4, 5), (16, 32, 256, 1, 4, 4)],
    16: [(16, 128, 128, 1, 4, 4), (16, 64, 256, 16, 4, 3), (16, 128, 256, 16, 4, 2)],
    64: [(32, 128, 128, 16, 4, 3), (16, 128, 128, 16, 8, 3), (32, 64, 128, 8, 4, 4)],
    128: [(64, 128, 128, 1, 8, 4), (64, 128, 64, 8, 4, 4), (32, 128, 128, 16, 4, 3)],
    256: [(128, 256, 64, 1, 8, 4), (64, 128, 64, 8, 4, 4), (128, 128, 64, 8, 8, 4)],
    512: [(128, 256, 64, 16, 8, 4), (128, 128, 64, 8, 8, 4), (64, 256, 64, 8, 8, 4)],
}
_INTERPRET_CONFIG = (BLOCK_M, 64, 64, 2, 4, 1)  # GROUP_M 2: the interpreter still runs the swizzle
_SMEM_BYTES = 227 * 1024  # H100/H200 per-block shared memory
_TUNED: dict[tuple, tuple] = {}  # (bucket, n, k (both GEMMs), dtype, device) -> chosen config


def token_bucket(n_tokens: int) -> int:
    """The CONFIGS key for n_tokens: the largest bucket <= the next power of two (1, 4, 16, ... 512)."""
    p = 1 << max(0, int(n_tokens) - 1).bit_length()
    return max(b for b in CONFIGS if b <= max(p, 1))


def _fits(conf: tuple, elem: int) -> bool:
    bm, bn, bk, _, _, stages = conf
    return stages * (bm + bn) * bk * elem <= _SMEM_BYTES


if HAVE_TRITON:

    @triton.jit
    def _moe_gemm_kernel(a_ptr, w_ptr, c_ptr, scale_ptr, slots_ptr, expert_ptr, num_slots, num_blocks_m, N, K,
                         a_row_div, stride_am, stride_we, stride_wn, stride_wk, stride_cm,
                         SCALE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        """c[slot] = (a[slot // a_row_div] @ w[expert]^T) (* scale[slot]) for BLOCK_M sorted slots.
        1-D grid, GROUP_M M-blocks (mostly one expert's) per N column before moving on: they share
        the weight tile in L2."""
        pid = tl.program_id(0)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        group_m = tl.minimum(num_blocks_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
        if expert < 0:  # a trailing block past every expert's run
            return
        slot = tl.load(slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        valid = slot < num_slots
        row = (slot // a_row_div).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + row[:, None] * stride_am + offs_k[None, :],
                        mask=valid[:, None] & (offs_k[None, :] < K), other=0.0)
            w = tl.load(w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
                        mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0)  # (BLOCK_K, BLOCK_N)
            if IEEE:
                acc += tl.dot(a, w, input_precision="ieee")
            elif UPCAST:  # bf16 under the interpreter (see kernels/flash_attention.py tile_dot)
                acc += tl.dot(a.to(tl.float32), w.to(tl.float32))
            else:
                acc += tl.dot(a, w)
        if SCALE:
            acc *= tl.load(scale_ptr + slot, mask=valid, other=0.0).to(tl.float32)[:, None]
        c = c_ptr + slot.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & (offs_n[None, :] < N))


def _gemm(a, w, out, scale, slots, experts, a_row_div: int, conf: tuple) -> None:
    """One grouped-GEMM launch: out (S, n) rows at sorted slots from a's rows and w (E, n, K)."""
    bm, bn, bk, group_m, warps, stages = conf
    n, k = w.shape[1], w.shape[2]
    num_blocks_m = experts.numel()
    grid = (num_blocks_m * triton.cdiv(n, bn),)
    _moe_gemm_kernel[grid](a, w, out, scale if scale is not None else out, slots, experts, out.shape[0],
                           num_blocks_m, n, k, a_row_div, a.stride(0), w.stride(0), w.stride(1), w.stride(2),
                           out.stride(0), SCALE=scale is not None, IEEE=a.dtype == torch.float32,
                           UPCAST=interpret_upcast(a), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m,
                           num_warps=warps, num_stages=stages)


def _run(x, w13, w2, weights, ids, conf: tuple) -> torch.Tensor:
    from kernels import ops

    n_tok, top_k = ids.shape
    slots, experts = align_by_expert(ids, w13.shape[0], conf[0])
    gate_up = torch.empty(n_tok * top_k, w13.shape[1], dtype=x.dtype, device=x.device)
    _gemm(x, w13, gate_up, None, slots, experts, top_k, conf)  # row of slot s is token s // k
    h = ops.silu_and_mul(gate_up)  # (N*k, I)
    out = torch.empty(n_tok * top_k, w2.shape[1], dtype=x.dtype, device=x.device)
    _gemm(h, w2, out, weights.reshape(-1).contiguous(), slots, experts, 1, conf)
    return out.view(n_tok, top_k, -1).sum(dim=1)


def config_for(x, w13, w2, weights, ids) -> tuple:
    """The tile config for this call: the interpreter's fixed one, else the token bucket's
    candidate that the first call of this (bucket, shape, dtype, device) timed fastest."""
    if not x.is_cuda:
        return _INTERPRET_CONFIG
    bucket = token_bucket(ids.shape[0])
    key = (bucket, tuple(w13.shape), tuple(w2.shape), x.dtype, x.device)
    conf = _TUNED.get(key)
    if conf is not None:
        return conf
    cands = [c for c in CONFIGS[bucket] if _fits(c, x.element_size())] or [_INTERPRET_CONFIG]
    if os.environ.get("LAB_MOE_TUNE", "1") == "0" or len(cands) == 1:
        conf = cands[0]
    elif torch.cuda.is_current_stream_capturing():  # no timing inside a CUDA graph (a warm-up tunes)
        return cands[0]
    else:  # time each candidate on this call's inputs (triton.testing.do_bench: L2 flushed per run), keep the fastest
        from triton.testing import do_bench

        times = []
        for c in cands:
            try:
                _run(x, w13, w2, weights, ids, c)  # compiles
            except triton.runtime.errors.OutOfResources:  # a candidate this GPU cannot hold
                times.append(float("inf"))
                continue
            times.append(do_bench(lambda c=c: _run(x, w13, w2, weights, ids, c), warmup=1, rep=5))
        conf = cands[times.index(min(times))]
    _TUNED[key] = conf
    return conf


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor) -> torch.Tensor:
    """x (N, H), w13 (E, 2I, H), w2 (E, H, I), routing weights (N, k) and expert ids (N, k) -> (N, H)."""
    assert x.is_contiguous() and w13.is_contiguous() and w2.is_contiguous(), "fused_moe wants contiguous inputs"
    return _run(x, w13, w2, weights, ids, config_for(x, w13, w2, weights, ids))
