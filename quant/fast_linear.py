"""Quantized Linear layers that run real low-bit kernels (GPU), built from quant/'s reference layers.

quant/qlinear.py and quant/int8.py hold the *arithmetic* of each format (dequantize, then a float
matmul): the reference. `to_fast(model, backend)` swaps those layers, in place, for these, which
read the packed weights directly:

  backend         from                                        layer                 kernel
  "triton"        QuantLinear W4 (contiguous groups, A16)     W4A16Linear           kernels.quant_matmul.w4a16_matmul_gemv
                                                                                    (g128; else w4a16_matmul)
                  Int8WeightOnlyLinear                        W8A16Linear           kernels.quant_matmul.w8a16_matmul
  "triton_v1"     as "triton", W4 kept on GPTQ's layout       W4A16Linear           w4a16_matmul (the bench's before row)
  "int4pack"      QuantLinear W4 (contiguous groups, A16)     Int4PackLinear        torch._weight_int4pack_mm (tinygemm)
  "int_mm"        QuantLinear W8A8 (sym, one group per row)   W8A8Linear            torch._int_mm (int8 x int8 -> int32)
  "scaled_mm"     FP8Linear (per-row weights, per-token act)  FP8RowwiseLinear      torch._scaled_mm (e4m3, row-wise)
  "fp8_wo"        FP8Linear (per-row weights, act None)       FP8WeightOnlyLinear   kernels.gemv8.fp8_wo_gemv (M <= 16)

At one token (GEMV_FUSED_ACT) W8A8Linear and FP8RowwiseLinear run kernels.act_quant_gemv instead:
the same per-token quantization grids fused into one GEMV launch (no eager quantize ops, no padding).

Each layer computes the same function as the layer it replaces, up to the rounding of its
kernel (tinygemm keeps scale and zero in bf16; W8A8 multiplies exact integers where the
reference multiplies their dequantized bf16 values). quant/tests/test_fast_linear.py checks
each against its reference. A layer this cannot convert raises QuantizationError naming it.
`auto_fast(model)` (called by scheduler.LLM for a quantized checkpoint) picks the backend that runs
every quantized layer (`fast_backend`) and swaps them on a CUDA model; CPU models stay as they are.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from quant.int8 import Int8WeightOnlyLinear
from quant.qlinear import FP8, FP8_MAX, FP8Linear, QuantLinear
from quant.rtn import QuantizationError

BACKENDS = ("triton", "triton_v1", "int4pack", "int_mm", "scaled_mm", "fp8_wo")  # triton_v1: GPTQ layout (the before row)
INT_MM_MIN_ROWS = 17  # torch._int_mm on CUDA wants more than 16 rows (and multiples of 8): pad decode batches


def _bias(mod: nn.Module, dtype) -> Optional[nn.Parameter]:
    return None if mod.bias is None else nn.Parameter(mod.bias.detach().to(dtype), requires_grad=False)


def _check_w4(mod: QuantLinear, name: str) -> None:
    """W4 A16, no input rotation, groups of contiguous input columns (act-order is reordered at load)."""
    if mod.bits != 4 or mod.act_bits is not None or mod.input_rotation is not None:
        raise QuantizationError(f"{name}: the W4A16 kernels take 4-bit weight-only layers without an input "
                                f"rotation, got {mod.extra_repr()}")
    contiguous = torch.arange(mod.in_features, device=mod.g_idx.device) // mod.group_size
    if not torch.equal(mod.g_idx.long(), contiguous):
        raise QuantizationError(f"{name}: act-order group indices (g_idx) are not contiguous groups; "
                                "the W4A16 kernels need them reordered at load")


class W4A16Linear(nn.Module):
    """y = x @ W'^T (+ bias) by our Triton W4A16 kernels.

    Group size 128 (and in % 128 == 0): the GEMV layout, shuffled here once (kernels.quant_gemv.
    pack_w4_gemv): qweight int32 (out, in / 8), each row's words contiguous; scales / zeros fp16
    (out, G); kernels.quant_matmul.w4a16_matmul_gemv (the row-streaming GEMV at M = 1). Other group
    sizes: GPTQ packing qweight int32 (in / 8, out), scales / zeros (G, out), w4a16_matmul (split-K
    skinny tiles at M <= 16). Zeros are the integer zero points (exact in fp16); kernels read fp32.
    """

    def __init__(self, mod: QuantLinear, name: str = "layer", gemv_layout: Optional[bool] = None):
        super().__init__()
        from kernels.quant_gemv import GEMV_GS, pack_w4_gemv
        from kernels.quant_matmul import pack_w4

        _check_w4(mod, name)
        self.in_features, self.out_features, self.group_size = mod.in_features, mod.out_features, mod.group_size
        fits = mod.group_size == GEMV_GS and mod.in_features % GEMV_GS == 0
        self.gemv_layout = fits if gemv_layout is None else (gemv_layout and fits)
        if self.gemv_layout:
            self.register_buffer("qweight", pack_w4_gemv(mod.qweight))
            self.register_buffer("scales", mod.scales.half().T.contiguous())
            self.register_buffer("zeros", mod.zeros.half().T.contiguous())
        else:
            self.register_buffer("qweight", pack_w4(mod.qweight))
            self.register_buffer("scales", mod.scales.half().contiguous())
            self.register_buffer("zeros", mod.zeros.half().contiguous())
        self.bias = _bias(mod, mod.scales.dtype if mod.bias is None else mod.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16/fp16 -> (..., out)."""
        from kernels.quant_matmul import w4a16_matmul, w4a16_matmul_gemv

        if self.gemv_layout:
            y = w4a16_matmul_gemv(x, self.qweight, self.scales, self.zeros)
        else:
            y = w4a16_matmul(x, self.qweight, self.scales, self.zeros, self.group_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int4PackLinear(nn.Module):
    """The same W4 layer through torch's tinygemm kernel: w = (q - 8) * scale + zero, with
    zero = (8 - z) * scale, both bf16 in a (G, out, 2) tensor (torch._weight_int4pack_mm's operand)."""

    INNER_K_TILES = 8

    def __init__(self, mod: QuantLinear, name: str = "layer"):
        super().__init__()
        _check_w4(mod, name)
        self.in_features, self.out_features, self.group_size = mod.in_features, mod.out_features, mod.group_size
        q = mod.qweight.to(torch.int32)  # (out, in) codes
        self.register_buffer("packed", torch._convert_weight_to_int4pack(
            ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8), self.INNER_K_TILES))
        s = mod.scales.float()
        self.register_buffer("scale_zero", torch.stack([s, (8 - mod.zeros.float()) * s], -1).bfloat16().contiguous())
        self.bias = _bias(mod, torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16 -> (..., out) bf16."""
        x2 = x.reshape(-1, self.in_features)
        y = torch._weight_int4pack_mm(x2, self.packed, self.group_size, self.scale_zero)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class W8A16Linear(nn.Module):
    """y = (x @ q^T) * scale (+ bias) by kernels.quant_matmul.w8a16_matmul; q int8 (out, in), scale fp32 (out,)."""

    def __init__(self, mod: Int8WeightOnlyLinear, name: str = "layer"):
        super().__init__()
        self.in_features, self.out_features = mod.in_features, mod.out_features
        self.register_buffer("weight", mod.weight.contiguous())
        self.register_buffer("weight_scale", mod.weight_scale.float().contiguous())
        self.bias = _bias(mod, torch.bfloat16 if mod.bias is None else mod.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16/fp16 -> (..., out)."""
        from kernels.quant_matmul import w8a16_matmul

        y = w8a16_matmul(x, self.weight, self.weight_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def quantize_tokens_int8(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token dynamic symmetric int8 (quant.rtn.quantize_activation's grid): (xq int8 (M, K), scale fp32 (M, 1))."""
    xf = x2.float()
    s = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / 127.0)).clamp(min=1e-8)  # as quant.rtn: one grid everywhere
    return torch.clamp(torch.round(xf / s), -127, 127).to(torch.int8), s


def int8_matmul(xq: torch.Tensor, wq_t: torch.Tensor) -> torch.Tensor:
    """int32 (M, N) = xq (M, K) int8 @ wq_t (K, N) int8, exact: torch._int_mm (rows padded to its minimum on
    CUDA), or an fp64 matmul elsewhere (exact: |sum| < 2^53)."""
    if xq.is_cuda:
        M = xq.shape[0]
        rows = max(INT_MM_MIN_ROWS, M)
        rows = (rows + 7) // 8 * 8
        if rows != M:
            xq = torch.cat([xq, xq.new_zeros(rows - M, xq.shape[1])])
        return torch._int_mm(xq, wq_t)[:M]
    return (xq.double() @ wq_t.double()).to(torch.int32)


class W8A8Linear(nn.Module):
    """SmoothQuant's W8A8 (smoothing already folded into the weights): y = (xq @ wq^T) * sx * sw.

    xq int8 per-token dynamic (quantize_tokens_int8), wq int8 (out, in) = the reference layer's
    codes minus its zero point 128, sw fp32 (out,) per-channel. Buffer weight is wq (out, in) row-major,
    so weight.T is the column-major operand torch._int_mm takes (torchao's convention).
    """

    def __init__(self, mod: QuantLinear, name: str = "layer"):
        super().__init__()
        if not (mod.bits == 8 and mod.act_bits == 8 and mod.sym and mod.scales.shape[0] == 1
                and mod.input_rotation is None):
            raise QuantizationError(f"{name}: W8A8 int_mm takes symmetric per-channel 8-bit weights with 8-bit "
                                    f"activations, got {mod.extra_repr()}")
        self.in_features, self.out_features = mod.in_features, mod.out_features
        wq = (mod.qweight.to(torch.int16) - mod.zeros[0].to(torch.int16)[:, None]).to(torch.int8)  # (out, in); zero 128
        self.register_buffer("weight", wq.contiguous())
        self.register_buffer("weight_scale", mod.scales[0].float().contiguous())
        self.bias = _bias(mod, torch.bfloat16 if mod.bias is None else mod.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype. One token: kernels.act_quant_gemv (quantization fused)."""
        x2 = x.reshape(-1, self.in_features)
        if _gemv_ok(x2):
            from kernels.act_quant_gemv import w8a8_gemv

            y = w8a8_gemv(x2.contiguous(), self.weight, self.weight_scale).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        xq, sx = quantize_tokens_int8(x2)
        acc = int8_matmul(xq, self.weight.T)  # (M, out) int32
        y = (acc.float() * sx * self.weight_scale).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class FP8RowwiseLinear(nn.Module):
    """y = (xq @ wq^T) * sx * sw by torch._scaled_mm: e4m3 weights with per-row scales, activations e4m3
    with a dynamic per-token scale (amax / 448), as FP8Linear(per_row=True, act="per_token") computes."""

    def __init__(self, mod: FP8Linear, name: str = "layer"):
        super().__init__()
        if not (mod.per_row and mod.act == "per_token"):
            raise QuantizationError(f"{name}: _scaled_mm row-wise takes per-row e4m3 weights with per-token "
                                    f"activations, got {mod.extra_repr()}")
        self.in_features, self.out_features = mod.in_features, mod.out_features
        self.register_buffer("weight", mod.weight.contiguous())  # (out, in) e4m3; .T is the column-major operand
        self.register_buffer("weight_scale", mod.weight_scale.float().reshape(1, -1).contiguous())  # (1, out)
        self.bias = _bias(mod, torch.bfloat16 if mod.bias is None else mod.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16 -> (..., out) bf16. One token: kernels.act_quant_gemv (quantization fused)."""
        if _gemv_ok(x.reshape(-1, self.in_features)):
            from kernels.act_quant_gemv import fp8_gemv

            y = fp8_gemv(x.reshape(-1, self.in_features).contiguous(), self.weight, self.weight_scale.reshape(-1))
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        x2 = x.reshape(-1, self.in_features).float()
        sx = (x2.abs().amax(dim=1, keepdim=True) * (1.0 / FP8_MAX)).clamp(min=1e-12)  # (M, 1), as quantize_fp8
        xq = (x2 / sx).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        y = torch._scaled_mm(xq, self.weight.T, scale_a=sx, scale_b=self.weight_scale, out_dtype=x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class FP8WeightOnlyLinear(nn.Module):
    """FP8 weight-only: y = (x @ q^T) * scale (+ bias), q e4m3 (out, in), scale fp32 (out,) per row, x bf16
    unquantized. Up to 16 tokens: kernels.gemv8.fp8_wo_gemv (the row-streaming GEMV, e4m3 converted in
    registers); more: the dequantized bf16 weight through F.linear (correct, not fast: prefill)."""

    def __init__(self, mod: FP8Linear, name: str = "layer"):
        super().__init__()
        if not (mod.per_row and mod.act is None):
            raise QuantizationError(f"{name}: fp8_wo takes per-row e4m3 weights without activation quantization, "
                                    f"got {mod.extra_repr()}")
        self.in_features, self.out_features = mod.in_features, mod.out_features
        self.register_buffer("weight", mod.weight.contiguous())
        self.register_buffer("weight_scale", mod.weight_scale.float().reshape(-1).contiguous())
        self.bias = _bias(mod, torch.bfloat16 if mod.bias is None else mod.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        from kernels._triton import can_run

        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= 16 and self.in_features % 256 == 0 and can_run(x2):
            from kernels.gemv8 import fp8_wo_gemv

            y = fp8_wo_gemv(x2.contiguous(), self.weight, self.weight_scale)
        else:
            w = (self.weight.to(x.dtype) * self.weight_scale[:, None].to(x.dtype))
            y = nn.functional.linear(x2, w)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


GEMV_FUSED_ACT = True  # one-token W8A8 / FP8 through kernels.act_quant_gemv (False: the eager quantize + torch GEMM)


def _gemv_ok(x2: torch.Tensor) -> bool:
    """Whether a W8A8 / FP8 layer runs x2 through the fused-quantization GEMV: one token, K % 256 == 0,
    a device Triton can run on (kernels._triton.can_run)."""
    from kernels._triton import can_run

    return GEMV_FUSED_ACT and x2.shape[0] == 1 and x2.shape[1] % 256 == 0 and can_run(x2)


def _convert(mod: nn.Module, backend: str, name: str) -> Optional[nn.Module]:
    """The fast layer for mod under backend, or None when backend does not take this kind of layer."""
    if backend in ("triton", "triton_v1"):
        if isinstance(mod, QuantLinear):
            return W4A16Linear(mod, name, gemv_layout=backend == "triton")
        if isinstance(mod, Int8WeightOnlyLinear):
            return W8A16Linear(mod, name)
    elif backend == "int4pack" and isinstance(mod, QuantLinear):
        return Int4PackLinear(mod, name)
    elif backend == "int_mm" and isinstance(mod, QuantLinear):
        return W8A8Linear(mod, name)
    elif backend == "scaled_mm" and isinstance(mod, FP8Linear):
        return FP8RowwiseLinear(mod, name)
    elif backend == "fp8_wo" and isinstance(mod, FP8Linear):
        return FP8WeightOnlyLinear(mod, name)
    return None


@torch.no_grad()
def to_fast(model: nn.Module, backend: str) -> int:
    """Swap every quantized layer of model for backend's kernel layer (module docstring), in place.

    Returns how many were swapped; QuantizationError for an unknown backend, for a quantized layer
    the backend cannot run, or when nothing was quantized.
    """
    if backend not in BACKENDS:
        raise QuantizationError(f"unknown fast backend {backend!r}; choose one of {BACKENDS}")
    n = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, (QuantLinear, Int8WeightOnlyLinear, FP8Linear)):
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            new = _convert(child, backend, full)
            if new is None:
                raise QuantizationError(f"{full}: backend {backend!r} does not run {type(child).__name__} layers")
            setattr(parent, child_name, new)
            n += 1
    if n == 0:
        raise QuantizationError("to_fast: the model has no quantized layers (run quant.quantize first)")
    return n


def _quantized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (QuantLinear, Int8WeightOnlyLinear, FP8Linear))]


def fast_backend(model: nn.Module) -> Optional[str]:
    """The backend whose kernels run *every* quantized layer of model, or None (then the reference layers stay).

    W4A16 (contiguous groups, no input rotation) and INT8 weight-only -> "triton"; W8A8 symmetric
    per-channel without rotation (SmoothQuant) -> "int_mm"; FP8 per-row weights with per-token
    activations -> "scaled_mm"; FP8 per-row weight-only -> "fp8_wo". Anything else (W4A4/W4A8, rotated, act-order, per-tensor FP8, mixed).
    """
    layers = _quantized_layers(model)
    if not layers:
        return None

    def w4a16(m):
        return (isinstance(m, QuantLinear) and m.bits == 4 and m.act_bits is None and m.input_rotation is None
                and torch.equal(m.g_idx.long(), torch.arange(m.in_features, device=m.g_idx.device) // m.group_size))

    def w8a8(m):
        return (isinstance(m, QuantLinear) and m.bits == 8 and m.act_bits == 8 and m.sym
                and m.group_size == m.in_features and m.input_rotation is None)

    if all(isinstance(m, Int8WeightOnlyLinear) or w4a16(m) for m in layers):
        return "triton"
    if all(w8a8(m) for m in layers):
        return "int_mm"
    if all(isinstance(m, FP8Linear) and m.per_row and m.act == "per_token" for m in layers):
        return "scaled_mm"
    if all(isinstance(m, FP8Linear) and m.per_row and m.act is None for m in layers):
        return "fp8_wo"
    return None


def auto_fast(model: nn.Module) -> Optional[str]:
    """On a CUDA model, swap its quantized layers for fast_backend's kernel layers; return the backend or None.

    A CPU model, an unquantized one, or one no backend runs whole is left as it is (the reference layers).
    """
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cuda":
        return None
    backend = fast_backend(model)
    if backend is not None:
        to_fast(model, backend)
    return backend
