"""silu_and_mul, the SwiGLU activation: PyTorch reference, Triton and CUDA faces.

Math: input [..., 2I] = [gate | up];  out[..., i] = silu(gate_i) * up_i,
silu(g) = g * sigmoid(g), computed in fp32 and rounded once to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _ext
from kernels._triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

_CUDA_MAX_ROWS = 65535  # grid.y limit of one launch


def silu_and_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """PyTorch reference: fp32 math, one rounding."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


if HAVE_TRITON:

    @triton.jit
    def _silu_and_mul_kernel(in_ptr, out_ptr, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        g = tl.load(in_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(in_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(out_ptr + row * inter + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _out(x2: torch.Tensor, inter: int, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty(x2.shape[0], inter, dtype=x2.dtype, device=x2.device)
    return out.view(x2.shape[0], inter)


def silu_and_mul_triton(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton kernel over a (rows, column blocks) grid."""
    inter = gate_up.shape[-1] // 2
    x2 = gate_up.reshape(-1, 2 * inter)
    out = _out(x2, inter, out)
    if x2.shape[0] and inter:
        block = min(2048, triton.next_power_of_2(inter))
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](
            x2, out, inter, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out.view(*gate_up.shape[:-1], inter)


def silu_and_mul_cuda(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """CUDA kernel from kernels._C (16-byte vectors; rows split per 65535)."""
    ext = _ext.load()
    inter = gate_up.shape[-1] // 2
    x2 = gate_up.reshape(-1, 2 * inter)
    out = _out(x2, inter, out)
    code = _ext.dtype_code(gate_up.dtype)
    def run(stream: int) -> None:
        for start in range(0, x2.shape[0], _CUDA_MAX_ROWS):
            rows = min(_CUDA_MAX_ROWS, x2.shape[0] - start)
            ext.silu_and_mul(out[start].data_ptr(), x2[start].data_ptr(), rows, inter, code, stream)

    _ext.launch(gate_up, run)
    return out.view(*gate_up.shape[:-1], inter)
