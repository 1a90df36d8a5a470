"""AWQ (Lin et al. 2023): activation-aware per-input-channel scales before W4 group quantization.

Salient weights are those multiplying large activations. For the linears sharing an input X,
AWQ searches s = mean|X|^r (normalized by sqrt(max s * min s)) over r in a grid of `n_grid`
points in [0, 1) and keeps the r minimizing
    sum_linears || X W^T - (X / s) Q(W * s)^T ||^2
with Q the RTN group quantizer (quant.rtn). The chosen s is folded into the producer of X
(quant.smoothquant.fold_input_scale) and the scaled weights are RTN-quantized. The clipping
search of the reference implementation is not done here.
"""

from __future__ import annotations

import torch

from quant.rtn import check_group_size, fake_quant, find_params


def group_fake_quant(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """RTN fake-quantized w (out, in) in groups of group_size columns (fp32)."""
    out_f, in_f = w.shape
    gs = check_group_size(group_size, in_f)
    wg = w.float().reshape(-1, gs)
    scale, zero = find_params(wg, bits, sym)
    return fake_quant(wg, scale[:, None], zero[:, None], bits).reshape(out_f, in_f)


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], bits: int = 4, group_size: int = 128,
                 sym: bool = False, n_grid: int = 20, max_tokens: int = 1024) -> tuple[torch.Tensor, float]:
    """(s (in,), best ratio r) for inputs x (tokens, in) shared by `weights` (module docstring)."""
    if x.shape[0] > max_tokens:  # evenly spaced tokens: deterministic and covers every window
        x = x[torch.linspace(0, x.shape[0] - 1, max_tokens).long()]
    x = x.float()
    x_mean = x.abs().mean(dim=0)
    refs = [x @ w.float().T for w in weights]
    best, best_r, best_s = float("inf"), 0.0, torch.ones_like(x_mean)
    for i in range(n_grid):
        r = i / n_grid
        s = x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        xs = x / s
        loss = sum(float((xs @ group_fake_quant(w.float() * s, bits, group_size, sym).T - ref).pow(2).sum())
                   for w, ref in zip(weights, refs))
        if loss < best:
            best, best_r, best_s = loss, r, s
    return best_s, best_r
