"""Round-to-nearest group quantization: the grid every integer method here shares.

Math (GPTQ's quantizer, for bits b, maxq = 2^b - 1, one group = a set of input columns of one
output row):
    asym: lo = min(x.min(), 0), hi = max(x.max(), 0)
    sym:  hi = max(|lo|, hi), lo = -hi
    scale = (hi - lo) / maxq   (rounded to fp16, the dtype GPTQ/AWQ checkpoints store it in)
    zero  = round(-lo / scale)  (asym)   or   (maxq + 1) / 2  (sym)
    q     = clamp(round(x / scale) + zero, 0, maxq)            (unsigned codes)
    W'    = scale * (q - zero)
An all-zero group gets lo = -1, hi = 1 (any scale works; this keeps it finite). The scale is
rounded to fp16 *before* q is computed, so q is the best code for the scale that is stored and
a saved checkpoint reloads to the very same W'.
"""

from __future__ import annotations

from typing import Optional

import torch

SUPPORTED_BITS = (2, 4, 8)  # the widths 32-bit packing (GPTQ/AWQ layouts) holds without straddling


class QuantizationError(ValueError):
    """A quantization request or checkpoint that cannot work; one line saying what to do."""


QuantConfigError = QuantizationError  # bad settings (bits, group size, method) raise the same one-line error


def check_bits(bits: int) -> None:
    """Raise QuantConfigError unless bits is one this lab packs."""
    if bits not in SUPPORTED_BITS:
        raise QuantConfigError(f"unsupported bits={bits}; choose one of {SUPPORTED_BITS}")


def check_group_size(group_size: int, in_features: int, name: str = "layer") -> int:
    """The effective group size (-1 -> in_features); QuantConfigError if it does not divide in_features."""
    if group_size == -1:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise QuantConfigError(f"group_size={group_size} does not divide in_features={in_features} of {name}; "
                               "choose a divisor (e.g. 128, 64) or -1 for one group per row")
    return group_size


def find_params(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of x (rows, cols) fp32; scale fp16-representable, zero integral."""
    maxq = 2 ** bits - 1
    x = x.float()
    lo = x.min(dim=1).values.clamp(max=0)
    hi = x.max(dim=1).values.clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    both = (lo == 0) & (hi == 0)
    lo, hi = torch.where(both, -1.0, lo), torch.where(both, 1.0, hi)
    scale = ((hi - lo) / maxq).half().float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 2.0 ** -24))  # fp16 underflow guard
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes clamp(round(x / scale) + zero, 0, maxq) as fp32 (scale/zero broadcast against x)."""
    return torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1)


def fake_quant(x: torch.Tensor, scale, zero, bits: int) -> torch.Tensor:
    """scale * (q - zero): the value a code stands for."""
    return scale * (quantize_codes(x, scale, zero, bits) - zero)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                 name: str = "layer") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN-quantize weight (out, in) in groups of group_size input columns.

    Returns (q uint8 (out, in), scales fp32 (n_groups, out), zeros uint8 (n_groups, out),
    g_idx int32 (in,)): the tensors of quant.qlinear.QuantLinear, in GPTQ's orientation.
    """
    check_bits(bits)
    out_f, in_f = weight.shape
    gs = check_group_size(group_size, in_f, name)
    w = weight.detach().float().reshape(out_f, in_f // gs, gs)  # (out, G, gs)
    scale, zero = find_params(w.reshape(-1, gs), bits, sym)  # (out * G,)
    scale, zero = scale.view(out_f, -1, 1), zero.view(out_f, -1, 1)
    q = quantize_codes(w, scale, zero, bits).reshape(out_f, in_f)
    g_idx = torch.arange(in_f, dtype=torch.int32) // gs
    return (q.to(torch.uint8), scale[..., 0].T.contiguous(), zero[..., 0].T.to(torch.uint8).contiguous(),
            g_idx)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
               dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
    """W'[o, i] = scales[g_idx[i], o] * (q[o, i] - zeros[g_idx[i], o]), (out, in) in dtype."""
    g = g_idx.long()
    s = scales.float()[g].T  # (out, in)
    z = zeros.float()[g].T
    return (s * (q.float() - z)).to(dtype)


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token dynamic symmetric fake quantization of x (..., K): amax/qmax scale per row.

    qmax = 2^(bits-1) - 1 (127 for int8, 7 for int4). The int GEMM a kernel would run,
    sum_k xq[k] * wq[k] * sx * sw, equals (xq * sx) @ (wq * sw)^T up to fp32 rounding, so
    this is the arithmetic of W8A8/W4A4 in floating point.
    """
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    # times the fp32 reciprocal: what CUDA's division by a scalar computes (a * (1 / b)), so the grid is the
    # same on every device (a true division on the CPU can differ by an ulp and flip a code)
    s = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / qmax)).clamp(min=1e-8)
    return (torch.clamp(torch.round(xf / s), -qmax, qmax) * s).to(x.dtype)
