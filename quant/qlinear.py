"""The quantized Linear layers the model runs in place of nn.Linear.

QuantLinear: integer weights in groups (RTN, GPTQ, AWQ, SmoothQuant, rotations), optional
per-token dynamic integer activations (W8A8, W4A4) and an optional online input rotation
(the R4 Hadamard before down_proj). FP8Linear: e4m3 weights with a per-tensor or per-row
scale, optionally e4m3 activations with a dynamic scale.

On a CPU (and as the reference for the GPU kernels) both dequantize and multiply in the
activation dtype: the arithmetic of the quantized format, not its speed. Buffers are the
unpacked tensors (uint8 codes); quant/formats.py packs them into GPTQ/AWQ int32 layouts.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from quant.rtn import dequantize, quantize_activation

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


class QuantLinear(nn.Module):
    """y = A(x R) @ W'^T (+ bias), W' = scales[g] * (q - zeros[g]) (quant.rtn.dequantize).

    Buffers: qweight uint8 (out, in) codes; scales fp16 (n_groups, out); zeros uint8
    (n_groups, out); g_idx int32 (in,) group of each input column (act-order permutes it);
    input_rotation fp32 (in, in) or absent (R: x -> x @ R before everything else).
    act_bits: None (weight-only), 8 or 4: A = per-token dynamic symmetric fake quantization.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, sym: bool,
                 act_bits: Optional[int] = None, bias: bool = False, rotation: bool = False,
                 device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.sym, self.act_bits = bits, group_size, sym, act_bits
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(n_groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("zeros", torch.zeros(n_groups, out_features, dtype=torch.uint8, device=device))
        self.register_buffer("g_idx", (torch.arange(in_features, device=device) // group_size).to(torch.int32))
        if rotation:
            self.register_buffer("input_rotation", torch.eye(in_features, device=device))
        else:
            self.input_rotation = None
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self._cache = None  # (dtype, device, dequantized weight): CPU emulation reuses it

    @classmethod
    def from_quantized(cls, linear: nn.Linear, q, scales, zeros, g_idx, bits: int, group_size: int, sym: bool,
                       act_bits: Optional[int] = None, rotation: Optional[torch.Tensor] = None) -> "QuantLinear":
        """Wrap codes from a quantizer (quant.rtn / quant.gptq) for linear's shape and bias."""
        mod = cls(linear.in_features, linear.out_features, bits, group_size, sym, act_bits,
                  bias=linear.bias is not None, rotation=rotation is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        mod.qweight.copy_(q)
        mod.scales.copy_(scales.half())
        mod.zeros.copy_(zeros)
        mod.g_idx.copy_(g_idx)
        if rotation is not None:
            mod.input_rotation.copy_(rotation)
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach())
        return mod

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """W' (out, in) in dtype (without the input rotation)."""
        return dequantize(self.qweight, self.scales, self.zeros, self.g_idx, dtype)

    def _weight(self, dtype) -> torch.Tensor:
        key = (dtype, self.qweight.device, self.qweight.data_ptr(), self.qweight._version,
               self.scales.data_ptr(), self.scales._version, self.zeros._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.dequantized_weight(dtype))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        if self.input_rotation is not None:
            x = (x.float() @ self.input_rotation).to(x.dtype)  # online R4 (a fast Hadamard on a GPU)
        if self.act_bits is not None:
            x = quantize_activation(x, self.act_bits)
        return nn.functional.linear(x, self._weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def weight_bytes(self) -> int:
        """Bytes of the deployed weight: bits/8 per code + fp16 scale + packed zero per group."""
        n = self.out_features * self.in_features * self.bits // 8
        n += self.scales.numel() * 2 + (0 if self.sym else self.zeros.numel() * self.bits // 8)
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        act = f"A{self.act_bits}" if self.act_bits else "A16"
        return (f"in_features={self.in_features}, out_features={self.out_features}, W{self.bits}{act} "
                f"group_size={self.group_size} {'sym' if self.sym else 'asym'}"
                + (", rotated input" if self.input_rotation is not None else ""))


def quantize_fp8(w: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 tensor, fp32 scale) with w ~ q * scale: scale = amax / 448 per tensor (shape ()) or per row ((rows, 1))."""
    wf = w.float()
    amax = wf.abs().amax(dim=-1, keepdim=True) if per_row else wf.abs().amax()
    scale = (amax * (1.0 / FP8_MAX)).clamp(min=1e-12)  # the fp32 reciprocal, as CUDA divides by a scalar
    return (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class FP8Linear(nn.Module):
    """y = A(x) @ (q * scale)^T: e4m3 weights, scale per tensor or per output row (fp32).

    act: None (weight-only) or "per_tensor" / "per_token": dynamic e4m3 activations with
    scale amax / 448 over the tensor or each token (as _scaled_mm's tensor-wise / row-wise).
    Buffers: weight float8_e4m3fn (out, in), weight_scale fp32 (out, 1) or ().
    """

    def __init__(self, in_features: int, out_features: int, per_row: bool, act: Optional[str] = None,
                 bias: bool = False, device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.per_row, self.act = in_features, out_features, per_row, act
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("weight_scale", torch.ones((out_features, 1) if per_row else (), device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, per_row: bool, act: Optional[str] = None) -> "FP8Linear":
        """Quantize linear's weight to e4m3 (quantize_fp8)."""
        mod = cls(linear.in_features, linear.out_features, per_row, act, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        q, s = quantize_fp8(linear.weight.detach(), per_row)
        mod.weight.copy_(q)
        mod.weight_scale.copy_(s)
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach())
        return mod

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """q * scale (out, in) in dtype."""
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype (fp32 emulation of the e4m3 GEMM)."""
        if self.act is not None:
            xq, xs = quantize_fp8(x.reshape(-1, self.in_features), per_row=self.act == "per_token")
            x = (xq.float() * xs).reshape(x.shape).to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def weight_bytes(self) -> int:
        """One byte per weight + the fp32 scales."""
        return self.weight.numel() + self.weight_scale.numel() * 4 + (
            0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 "
                f"{'per-row' if self.per_row else 'per-tensor'} weights, activations {self.act or 'fp'}")
