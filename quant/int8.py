"""Symmetric per-output-channel INT8 weight-only quantization (W8A16 / W8A32).

Math, for a Linear weight W (out_features, in_features):

    scale[o] = max_i |W[o, i]| / 127            (fp32; a zero row gets scale 1)
    q[o, i]  = clamp(round(W[o, i] / scale[o]), -127, 127)   (int8)
    W'[o, i] = q[o, i] * scale[o]               (what the layer multiplies by)

so |W - W'| <= scale / 2 = max|W[o]| / 254, about 0.4% of each row's largest weight.
The range is symmetric (-127..127, never -128) so the scale maps both signs alike;
TensorRT-LLM's W8A16 and torchao's int8 weight-only use the same recipe.
"""

from __future__ import annotations

import torch
from torch import nn

QMAX = 127

# Activation dtypes torch._weight_int8pack_mm accepts on CPU (checked on torch 2.13).
_INT8PACK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_int8_per_channel(weight: torch.Tensor,
                              scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (q int8 (out, in), scale (out,) in scale_dtype) for a 2-D weight (module docstring).

    scale_dtype: the dtype the scales will be stored in (TensorRT-LLM keeps them in the
    model dtype). The scale is rounded to it *before* q is computed, so q * scale is
    the best int8 fit for the stored scale (bf16 rounding alone would otherwise add up
    to half a step of error).
    """
    assert weight.dim() == 2, f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}"
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax)).to(scale_dtype).float()
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale.to(scale_dtype)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """W' = q * scale[:, None], in `dtype` (q int8 (out, in), scale (out,))."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def int8pack_supported(x: torch.Tensor) -> bool:
    """True when torch._weight_int8pack_mm runs for activations like x (..., K).

    CPU only, fp32/bf16/fp16. The bf16/fp16 CPU kernel segfaults when K % 16 != 0
    (torch 2.13, measured for K in 8..4096: 8, 24, 40, 120, 136 crash; every multiple
    of 16 runs); fp32 runs for any K. Those shapes take the dequantize path.
    """
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm") or x.device.type != "cpu":
        return False
    if x.dtype == torch.float32:
        return True
    return x.dtype in _INT8PACK_DTYPES and x.shape[-1] % 16 == 0


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (q * scale[:, None]).T (+ bias): int8 weights, activations stay in x's dtype.

    Buffers: `weight` int8 (out, in) and `weight_scale` fp32 (out,), so state_dict keys
    are `<name>.weight` and `<name>.weight_scale` (the checkpoint format of
    quant/quantize.py). Fast path: torch._weight_int8pack_mm on CPU (fp32/bf16/fp16);
    elsewhere (CUDA, other dtypes) dequantize to x's dtype and matmul, which is exact
    to the same math but reads the weight twice.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32,
                                                        device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8WeightOnlyLinear":
        """Quantize an nn.Linear's weight per output channel; the bias stays in floating point."""
        q, scale = quantize_int8_per_channel(linear.weight)
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        mod.weight.copy_(q)
        mod.weight_scale.copy_(scale)
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach())
        return mod

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The (out, in) weight this layer multiplies by, in `dtype`."""
        return dequantize_int8(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features) in x's dtype."""
        if int8pack_supported(x):
            x2 = x.reshape(-1, self.in_features).contiguous()  # (tokens, in)
            y = torch._weight_int8pack_mm(x2, self.weight, self.weight_scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)  # (..., out)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        w = self.dequantized_weight(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"
