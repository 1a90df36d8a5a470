"""Mixtral's sparse mixture of experts: a top-k router over n_experts SwiGLU MLPs.

Weights are stacked per expert (model/arch.py stacks the checkpoint's per-expert w1/w3/w2):
  gate.weight (E, H)      the router
  w13         (E, 2I, H)  [w1 | w3] of each expert (w1 = gate projection, w3 = up)
  w2          (E, H, I)   each expert's down projection
Routing follows transformers' Mixtral: softmax over the router logits in fp32, top-k, the k
weights renormalised to sum 1, cast to the activations' dtype. `moe_reference` is the plain
per-expert loop (the readable reference and the CPU path); on CUDA the fused Triton kernel
(kernels/fused_moe.py: tokens sorted by expert, one grouped GEMM launch per projection) runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def route(x: torch.Tensor, gate_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router of Mixtral: x (N, H) -> (weights (N, k) in x's dtype, expert ids (N, k) long)."""
    logits = F.linear(x, gate_weight)  # (N, E)
    probs = F.softmax(logits, dim=-1, dtype=torch.float)
    weights, ids = torch.topk(probs, top_k, dim=-1)  # (N, k)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(x.dtype), ids


def moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """The per-expert loop: for each expert, its tokens through SwiGLU, scaled, added. x (N, H) -> (N, H)."""
    out = torch.zeros_like(x)
    inter = w2.shape[2]
    for e in range(w13.shape[0]):
        tok, slot = torch.where(ids == e)  # the tokens routed to e and which of their k picks it is
        if tok.numel() == 0:
            continue
        gate_up = F.linear(x[tok], w13[e])  # (n_e, 2I)
        h = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = F.linear(h, w2[e]) * weights[tok, slot, None]  # (n_e, H)
        out.index_add_(0, tok, y.to(out.dtype))
    return out


def moe_dense(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, weights: torch.Tensor,
              ids: torch.Tensor) -> torch.Tensor:
    """moe_reference without data-dependent shapes (for torch.export / ONNX): every expert runs on
    every token and unrouted tokens get weight 0 (adding an exact 0 changes nothing). Same sums in
    the same expert order as the loop; only the matmuls' row blocking differs (~1e-7 relative)."""
    out = torch.zeros_like(x)
    inter = w2.shape[2]
    for e in range(w13.shape[0]):
        w = (weights * (ids == e)).sum(dim=-1, keepdim=True)  # (N, 1): routing weight of e, or 0
        gate_up = F.linear(x, w13[e])
        out = out + F.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], w2[e]) * w
    return out


class MoE(nn.Module):
    """The Mixtral MLP: route each token to its top-k experts and sum their weighted outputs."""

    def __init__(self, config):
        super().__init__()
        e, h, i = config.n_experts, config.dim, config.intermediate_size
        self.top_k = config.n_experts_per_tok
        self.gate = nn.Linear(h, e, bias=False)
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, h))
        self.w2 = nn.Parameter(torch.empty(e, h, i))

    def fuse(self) -> bool:
        """fuse_projections' hook: w13 already holds [w1 | w3] per expert, nothing to fuse."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, H)
        weights, ids = route(x, self.gate.weight, self.top_k)
        if x.is_cuda and not torch.compiler.is_compiling():
            from kernels.fused_moe import fused_moe

            y = fused_moe(x, self.w13, self.w2, weights, ids)
        elif torch.compiler.is_exporting() or torch.compiler.is_compiling():
            y = moe_dense(x, self.w13, self.w2, weights, ids)
        else:
            y = moe_reference(x, self.w13, self.w2, weights, ids)
        return y.reshape(shape)
