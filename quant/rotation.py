"""QuaRot / SpinQuant rotations: orthogonal changes of basis that leave the fp model's function
unchanged and spread activation outliers over all channels before quantization.

- Norm folding: each RMSNorm's weight g is multiplied into the columns of the linears it feeds
  (q/k/v, gate/up, lm_head) and set to 1; RMSNorm without weight commutes with any orthogonal R
  (||x R|| = ||x||), which is what makes R1 possible.
- R1 (dim x dim) rotates the residual stream: embed E -> E R1; every linear reading the stream
  W -> W R1; every linear writing it (o_proj, down_proj) W -> R1^T W. lm_head W diag(g) R1 is
  no longer the embedding, so a tied LM head is untied.
- R2 (head_dim x head_dim) per head: v_proj rows of each KV head W_v -> R2^T W_v, o_proj columns
  of each head W_o -> W_o R2 (attention mixes tokens, not channels, so it commutes).
- R4 online: down_proj W -> W H and its input x -> x H at run time (RotatedLinear here; the
  quantized layer keeps H as input_rotation). H = the normalized Hadamard matrix.
"Random Hadamard" (QuaRot) is H diag(+-1). Sizes that are not powers of two (384 = 3 * 128)
use kron(H_{2^k}, Q_m) with Q_m a seeded random orthogonal m x m matrix (QuaRot uses the known
Hadamard matrices of order 12, 20, 28, ... for these; any orthogonal matrix keeps the
equivalence, Hadamard ones spread outliers best). Learned rotations (SpinQuant's Cayley SGD,
quant/spinquant.py) come in through rotate's r1 / r2 arguments; any orthogonal matrix works.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


def hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """Orthogonal (n, n) fp64: normalized Sylvester Hadamard for n = 2^k, else kron(H_{2^k}, Q_m)."""
    k = (n & -n)  # largest power of two dividing n
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < k:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    H = H / math.sqrt(k)
    m = n // k
    if m == 1:
        return H
    g = torch.Generator().manual_seed(seed + 7919)
    Q, R = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))[None, :]
    return torch.kron(Q.contiguous(), H)


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """QuaRot's randomized Hadamard diag(+-1) H (n, n) fp64, seeded."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard(n, seed)


class RotatedLinear(nn.Module):
    """y = linear(x @ rotation): an online input rotation in front of an (already rotated) Linear."""

    def __init__(self, linear: nn.Linear, rotation: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("rotation", rotation.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return self.linear((x.float() @ self.rotation).to(x.dtype))


def _set(linear: nn.Linear, w: torch.Tensor) -> None:
    linear.weight = nn.Parameter(w.to(linear.weight.dtype), requires_grad=False)


@torch.no_grad()
def rotate(model: nn.Module, seed: int = 0, online_r4: bool = True, r1: Optional[torch.Tensor] = None,
           r2: Optional[Sequence[torch.Tensor]] = None, kind: str = "random_hadamard") -> nn.Module:
    """Fold norms, apply R1, R2 per head and R4 before down_proj, in place; return model.

    r1 (dim, dim) and r2 (one (head_dim, head_dim) per layer) default to seeded random
    Hadamards (QuaRot); learned ones (quant/spinquant.py) are passed in, `kind` names them.
    The model must hold plain (unfused, unquantized) Linears. Computed in fp64, stored back in
    the weights' dtype. The model's config is replaced by one with tie_word_embeddings=False.
    """
    cfg = model.config
    dim, hd = cfg.dim, cfg.head_dim
    R1 = random_hadamard(dim, seed) if r1 is None else r1.double().cpu()
    R2s = [random_hadamard(hd, seed + 1)] * cfg.n_layers if r2 is None else [r.double().cpu() for r in r2]
    if R1.shape != (dim, dim) or len(R2s) != cfg.n_layers or any(r.shape != (hd, hd) for r in R2s):
        raise ValueError(f"rotate: r1 must be ({dim}, {dim}) and r2 {cfg.n_layers} matrices ({hd}, {hd})")
    dev = model.model.embed_tokens.weight.device
    R1, R2s = R1.to(dev), [r.to(dev) for r in R2s]
    dec = model.model
    emb = dec.embed_tokens
    head = nn.Linear(dim, cfg.vocab_size, bias=False, device=emb.weight.device, dtype=emb.weight.dtype)
    head.weight = nn.Parameter((model.lm_head.weight.double() * dec.norm.weight.double()[None, :] @ R1)
                               .to(emb.weight.dtype), requires_grad=False)
    model.lm_head = head
    emb.weight = nn.Parameter((emb.weight.double() @ R1).to(emb.weight.dtype), requires_grad=False)
    dec.norm.weight.fill_(1.0)
    model.config = cfg.replace(tie_word_embeddings=False)
    for layer, R2 in zip(dec.layers, R2s, strict=True):
        att, mlp = layer.self_attn, layer.mlp
        for norm, readers in ((layer.input_layernorm, (att.q_proj, att.k_proj, att.v_proj)),
                              (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
            g = norm.weight.double()
            for lin in readers:
                _set(lin, lin.weight.double() * g[None, :] @ R1)
            norm.weight.fill_(1.0)
        for lin in (att.o_proj, mlp.down_proj):  # writers of the residual stream
            _set(lin, R1.T @ lin.weight.double())
        wv = att.v_proj.weight.double().view(cfg.n_kv_heads, hd, dim)  # per KV head (hd, dim)
        _set(att.v_proj, (R2.T[None] @ wv).reshape(cfg.n_kv_heads * hd, dim))
        wo = att.o_proj.weight.double().view(dim, cfg.n_heads, hd)  # columns per head
        _set(att.o_proj, (wo @ R2).reshape(dim, cfg.n_heads * hd))
        if online_r4:
            H4 = hadamard(cfg.intermediate_size, seed + 2).to(dev)
            _set(mlp.down_proj, mlp.down_proj.weight.double() @ H4)
            mlp.down_proj = RotatedLinear(mlp.down_proj, H4)
    model.rotation = {"r1": kind, "r2": kind, "r4": "hadamard" if online_r4 else None,
                      "seed": seed}
    return model
