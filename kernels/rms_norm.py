"""RMSNorm and fused residual-add + RMSNorm: PyTorch reference, Triton and CUDA faces.

Math (per row of length H, statistics in fp32):
    rms_norm(x, w)        = w * round_T(x / sqrt(mean(x^2) + eps))
    fused_add_rms_norm    : residual <- round_T(residual + x);  return rms_norm(residual, w)
round_T rounds to the input dtype before the weight multiply, as Hugging Face's
LlamaRMSNorm does, so the faces agree with the reference model bit-for-bit in fp32.
"""

from __future__ import annotations

import torch

from kernels import _ext
from kernels._triton import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PyTorch reference (the Hugging Face formulation)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def fused_add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                 eps: float = 1e-6) -> torch.Tensor:
    """PyTorch reference: residual += x in place, then RMSNorm of residual."""
    residual.add_(x)
    return rms_norm_reference(residual, weight, eps)


if HAVE_TRITON:

    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n_cols, eps,
                         BLOCK: tl.constexpr, FUSED_ADD: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
        if FUSED_ADD:
            r = tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0)
            x = (r.to(tl.float32) + x.to(tl.float32)).to(r.dtype)
            tl.store(res_ptr + row * n_cols + cols, x, mask=mask)
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        y = (xf * rstd).to(x.dtype).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (w.to(tl.float32) * y).to(x.dtype), mask=mask)


def _triton_launch(x2, res2, weight, out, eps, fused):
    rows, hidden = x2.shape
    block = triton.next_power_of_2(hidden)
    warps = 16 if block >= 16384 else 8 if block >= 4096 else 4 if block >= 1024 else 2
    _rms_norm_kernel[(rows,)](x2, res2 if fused else x2, weight, out, hidden, eps,
                              BLOCK=block, FUSED_ADD=fused, num_warps=warps)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton kernel, one program per row. x contiguous, weight (H,) of x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(x2) if out is None else out.view(x2.shape)
    if x2.shape[0]:
        _triton_launch(x2, None, weight, out, eps, fused=False)
    return out.view(x.shape)


def fused_add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                              eps: float = 1e-6, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton kernel: residual += x in place, returns RMSNorm(residual)."""
    x2 = x.reshape(-1, x.shape[-1])
    r2 = residual.view(-1, residual.shape[-1])
    out = torch.empty_like(x2) if out is None else out.view(x2.shape)
    if x2.shape[0]:
        _triton_launch(x2, r2, weight, out, eps, fused=True)
    return out.view(x.shape)


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """CUDA kernel from kernels._C (rows kept in registers, 16-byte vectors)."""
    ext = _ext.load()
    out = torch.empty_like(x) if out is None else out
    rows = x.numel() // x.shape[-1]
    _ext.launch(x, lambda stream: ext.rms_norm(out.data_ptr(), x.data_ptr(), weight.data_ptr(), rows, x.shape[-1],
                                               float(eps), _ext.dtype_code(x.dtype), stream))
    return out


def fused_add_rms_norm_cuda(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                            eps: float = 1e-6, out: torch.Tensor | None = None) -> torch.Tensor:
    """CUDA kernel: residual += x in place, returns RMSNorm(residual)."""
    ext = _ext.load()
    out = torch.empty_like(x) if out is None else out
    rows = x.numel() // x.shape[-1]
    _ext.launch(x, lambda stream: ext.fused_add_rms_norm(out.data_ptr(), residual.data_ptr(), x.data_ptr(),
                                                         weight.data_ptr(), rows, x.shape[-1], float(eps),
                                                         _ext.dtype_code(x.dtype), stream))
    return out
