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
"""

from __future__ import annotations

import torch

from kernels._triton import HAVE_TRITON
from kernels.flash_attention import interpret_upcast

if HAVE_TRITON:
    import triton
    import triton.language as tl

BLOCK_M = 16  # slots per block (tl.dot's minimum); each expert's run is padded to a multiple


def align_by_expert(ids: torch.Tensor, n_experts: int, block_m: int = BLOCK_M):
    """ids (N, k) expert of each pick -> (sorted_slots (P,), expert_of_block (P // block_m,)).

    sorted_slots lists the flat slots n * k + j grouped by expert (stable), each group padded to
    a multiple of block_m with N * k (a slot no kernel reads or writes)."""
    flat = ids.reshape(-1)
    total = flat.numel()
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    counts = torch.bincount(flat, minlength=n_experts)  # (E,)
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded  # where each expert's run begins
    sorted_slots = torch.full((int(padded.sum()),), total, dtype=torch.int32, device=ids.device)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(total, device=ids.device) - group_start[flat[order]]  # index within its group
    sorted_slots[starts[flat[order]] + rank] = order.to(torch.int32)
    expert_of_block = torch.repeat_interleave(torch.arange(n_experts, device=ids.device), padded // block_m)
    return sorted_slots, expert_of_block.to(torch.int32)


if HAVE_TRITON:

    @triton.jit
    def _moe_gemm_kernel(a_ptr, w_ptr, c_ptr, scale_ptr, slots_ptr, expert_ptr, num_slots, N, K,
                         a_row_div, stride_am, stride_we, stride_wn, stride_wk, stride_cm,
                         SCALE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """c[slot] = (a[slot // a_row_div] @ w[expert]^T) (* scale[slot]) for BLOCK_M sorted slots."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        slot = tl.load(slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        valid = slot < num_slots
        row = (slot // a_row_div).to(tl.int64)
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
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


def _gemm(a, w, out, scale, slots, experts, a_row_div: int) -> None:
    """One grouped-GEMM launch: out (S, n) rows at sorted slots from a's rows and w (E, n, K)."""
    n, k = w.shape[1], w.shape[2]
    block_n = 64 if n >= 64 else 32
    block_k = 64 if k >= 64 else 32
    grid = (slots.numel() // BLOCK_M, triton.cdiv(n, block_n))
    _moe_gemm_kernel[grid](a, w, out, scale if scale is not None else out, slots, experts, out.shape[0], n, k,
                           a_row_div, a.stride(0), w.stride(0), w.stride(1), w.stride(2), out.stride(0),
                           SCALE=scale is not None, IEEE=a.dtype == torch.float32,
                           UPCAST=interpret_upcast(a), BLOCK_M=BLOCK_M,
                           BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor) -> torch.Tensor:
    """x (N, H), w13 (E, 2I, H), w2 (E, H, I), routing weights (N, k) and expert ids (N, k) -> (N, H)."""
    from kernels import ops

    n_tok, top_k = ids.shape
    assert x.is_contiguous() and w13.is_contiguous() and w2.is_contiguous(), "fused_moe wants contiguous inputs"
    slots, experts = align_by_expert(ids, w13.shape[0])
    gate_up = torch.empty(n_tok * top_k, w13.shape[1], dtype=x.dtype, device=x.device)
    _gemm(x, w13, gate_up, None, slots, experts, top_k)  # row of slot s is token s // k
    h = ops.silu_and_mul(gate_up)  # (N*k, I)
    out = torch.empty(n_tok * top_k, w2.shape[1], dtype=x.dtype, device=x.device)
    _gemm(h, w2, out, weights.reshape(-1).contiguous(), slots, experts, 1)
    return out.view(n_tok, top_k, -1).sum(dim=1)
