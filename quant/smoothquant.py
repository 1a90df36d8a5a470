"""SmoothQuant (Xiao et al. 2022) W8A8 and the per-input-channel scale folding AWQ shares.

SmoothQuant moves activation outliers into the weights: for the linears sharing an input X,
    s_j = max|X_j|^alpha / max_linears max|W_:,j|^(1 - alpha)
then X' = X / s (folded into whatever produces X) and W' = W * s (columns), so X' W'^T = X W^T.
Weights are then int8 per output channel (symmetric), activations int8 per token, dynamic.
alpha (the migration strength) is a flag: 0.5 balances the two; larger moves more into weights.

Folding (`fold_input_scale`), the one place a per-channel input scale is absorbed:
  q/k/v      <- input_layernorm.weight / s
  gate/up    <- post_attention_layernorm.weight / s
  down_proj  <- up_proj rows / s  (silu(gate) * up is linear in up)
  o_proj     <- v_proj rows / s, only when n_heads == n_kv_heads (with GQA one v channel feeds
                several heads' o_proj columns, so no per-column scale exists; skipped, as AutoAWQ does)
"""

from __future__ import annotations

import torch
from torch import nn

from quant.calibrate import GROUPS


def fold_input_scale(layer: nn.Module, group: tuple[str, ...], s: torch.Tensor, config) -> bool:
    """Scale the inputs of `group` by 1/s and its weights' columns by s (module docstring); False if
    the group's input cannot carry a scale (o_proj under GQA)."""
    att, mlp = layer.self_attn, layer.mlp
    s = s.double()
    if group == GROUPS[1]:
        if config.n_heads != config.n_kv_heads:
            return False
        producer = att.v_proj
    else:
        producer = {GROUPS[0]: layer.input_layernorm, GROUPS[2]: layer.post_attention_layernorm,
                    GROUPS[3]: mlp.up_proj}[group]
    w = producer.weight
    if w.dim() == 1:  # a norm's weight
        w.data.copy_((w.double() / s).to(w.dtype))
    else:  # a linear's output rows
        w.data.copy_((w.double() / s[:, None]).to(w.dtype))
    for name in group:
        lin = layer.get_submodule(name)
        lin.weight.data.copy_((lin.weight.double() * s[None, :]).to(lin.weight.dtype))
    return True


def smooth_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s (in,) = x_absmax^alpha / w_absmax^(1 - alpha), w_absmax over the columns of all weights."""
    w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = x_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)
