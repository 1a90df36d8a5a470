"""GPTQ (Frantar et al. 2022): quantize a weight column by column, pushing each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer loss.

For a Linear with calibration inputs X (n, in), the layer loss ||X W^T - X W'^T||^2 has
Hessian H = 2/n X^T X (in, in). With U = chol(H^-1) (upper), column j is quantized to q_j and
    err_j = (w_j - q_j) / U[j, j];   w_k -= err_j * U[j, k]   for every k > j
(OBS update). Details, as in the reference implementation:
- dead inputs (H[j, j] == 0) get H[j, j] = 1 and weight 0;
- dampening: H += percdamp * mean(diag H) * I before the inverse;
- lazy batch updates: inside a block of `blocksize` columns the update touches the block only;
  the block's accumulated error reaches the later columns in one matmul;
- act-order (desc_act): columns are processed by decreasing H[j, j]; the group of a column is
  its position in that order // group_size, recorded in g_idx (GPTQ's checkpoint layout);
- a group's (scale, zero) are found (quant.rtn.find_params) from the error-updated weights of
  its columns when the first of them is reached.
"""

from __future__ import annotations

import torch

from quant.rtn import check_bits, check_group_size, find_params, quantize_codes


class Hessian:
    """Running H = 2/n sum_x x^T x over calibration inputs (fp64 accumulation on the input's device)."""

    def __init__(self, in_features: int, device="cpu"):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate inputs x (..., in)."""
        x = x.reshape(-1, x.shape[-1]).double()  # (tokens, in)
        self.H += x.T @ x
        self.n += x.shape[0]

    def value(self) -> torch.Tensor:
        """2/n X^T X in fp32."""
        return (2.0 / max(self.n, 1) * self.H).float()


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 128,
                  sym: bool = False, act_order: bool = False, percdamp: float = 0.01,
                  blocksize: int = 128, name: str = "layer"):
    """GPTQ-quantize weight (out, in) given H (in, in).

    Returns (q uint8 (out, in), scales fp32 (n_groups, out), zeros uint8 (n_groups, out),
    g_idx int32 (in,)) in the original column order (quant.rtn.dequantize reads them).
    """
    check_bits(bits)
    W = weight.detach().float().clone()
    out_f, in_f = W.shape
    gs = check_group_size(group_size, in_f, name)
    if H.shape != (in_f, in_f):
        raise ValueError(f"Hessian of {name} is {tuple(H.shape)}, expected ({in_f}, {in_f})")
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(in_f)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    blocksize = max(gs, blocksize - blocksize % gs) if gs < in_f else blocksize  # groups never straddle blocks
    Q = torch.zeros_like(W)
    n_groups = in_f // gs
    scales = torch.zeros(n_groups, out_f)
    zeros = torch.zeros(n_groups, out_f)
    scale = zero = None
    if gs == in_f:  # one group per row: parameters of the whole row, once
        scale, zero = find_params(W, bits, sym)
        scales[0], zeros[0] = scale, zero
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if gs < in_f and col % gs == 0:  # first column of a group: its parameters
                scale, zero = find_params(W1[:, i:i + gs], bits, sym)
                scales[col // gs], zeros[col // gs] = scale, zero
            w, d = W1[:, i], U1[i, i]
            q = scale * (quantize_codes(w, scale, zero, bits) - zero)
            Q[:, col] = quantize_codes(w, scale, zero, bits)
            err = (w - q) / d
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    inv = torch.argsort(perm)
    q = Q[:, inv].to(torch.uint8)  # back to the original column order
    g_idx = (torch.arange(in_f) // gs)[inv].to(torch.int32)  # column c sat at position inv[c]
    return q, scales, zeros.to(torch.uint8), g_idx
