"""vector_add: out = x + alpha * y. The toolchain's proof op: CUDA face and reference."""

from __future__ import annotations

import torch

from kernels import _ext


def vector_add_reference(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """PyTorch reference: x + alpha * y computed in fp32, cast to x's dtype."""
    return (x.float() + alpha * y.float()).to(x.dtype)


def vector_add_cuda(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """CUDA kernel from kernels._C: x + alpha * y for same-shape contiguous CUDA tensors."""
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"vector_add: x and y must match, got {tuple(x.shape)} {x.dtype} {x.device} "
                         f"and {tuple(y.shape)} {y.dtype} {y.device}")
    if x.device.type != "cuda":
        raise ValueError(f"vector_add_cuda: tensors must be on a CUDA device, got {x.device}")
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("vector_add_cuda: inputs must be contiguous (call .contiguous())")
    ext = _ext.load()
    out = torch.empty_like(x)
    _ext.launch(x, lambda stream: ext.vector_add(out.data_ptr(), x.data_ptr(), y.data_ptr(), x.numel(),
                                                 float(alpha), _ext.dtype_code(x.dtype), stream))
    return out
