"""The one dispatcher for the model's ops: CUDA, then Triton, then the PyTorch reference.

Choice per call, visible in one place:
  backend argument ("cuda" | "triton" | "torch")  >  $LAB_KERNEL_BACKEND  >  auto.
Auto picks CUDA (kernels._C) for CUDA tensors when the extension loads, else
Triton, else the reference; CPU tensors use the reference. Inside torch.compile
or torch.export tracing the reference is used, so compiled graphs stay pure PyTorch.
"""

from __future__ import annotations

import functools
import os

import torch

from kernels import _ext, _triton
from kernels import rms_norm as _rms
from kernels import silu_and_mul as _silu

BACKENDS = ("cuda", "triton", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelInputError(ValueError):
    """An op got an input it cannot take; the message says what arrived and what to do."""


@functools.lru_cache(maxsize=None)
def _cuda_ext_ok() -> bool:
    try:
        _ext.load()
        return True
    except ImportError:
        return False


def available_backends(device: str | torch.device = "cuda") -> list[str]:
    """Backends that can run on `device` here, in the auto order."""
    device = torch.device(device)
    found = []
    if device.type == "cuda" and torch.cuda.is_available():
        if _cuda_ext_ok():
            found.append("cuda")
        if _triton.HAVE_TRITON:
            found.append("triton")
    elif device.type == "cpu" and _triton.HAVE_TRITON and _triton.interpreting():
        found.append("triton")
    return found + ["torch"]


def _pick(t: torch.Tensor, backend: str | None) -> str:
    if torch.compiler.is_compiling():
        return "torch"
    backend = backend or os.environ.get("LAB_KERNEL_BACKEND") or None
    if backend is None:
        if t.is_cuda:
            return "cuda" if _cuda_ext_ok() else "triton" if _triton.HAVE_TRITON else "torch"
        return "torch"
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cuda" and not (t.is_cuda and _cuda_ext_ok()):
        raise KernelInputError(f"backend 'cuda' needs a CUDA tensor and the kernels._C extension "
                               f"(tensor is on {t.device}); use backend='triton' or 'torch'")
    if backend == "triton" and not _triton.can_run(t):
        raise KernelInputError(f"backend 'triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 "
                               f"for CPU tensors); tensor is on {t.device}")
    return backend


def _check(name: str, x: torch.Tensor, *, last_dim: int | None = None) -> None:
    if x.dtype not in _DTYPES:
        raise KernelInputError(f"{name}: dtype {x.dtype} is not supported; use float32, float16 or bfloat16")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise KernelInputError(f"{name}: expected a tensor [..., H] with H > 0, got shape {tuple(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise KernelInputError(f"{name}: last dimension must be {last_dim}, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise KernelInputError(f"{name}: input must be contiguous (got strides {x.stride()}); call .contiguous()")


def _check_weight(name: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise KernelInputError(f"{name}: weight must be ({x.shape[-1]},) to match x {tuple(x.shape)}, "
                               f"got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise KernelInputError(f"{name}: weight is on {weight.device} but x is on {x.device}")
    if weight.dtype != x.dtype:
        raise KernelInputError(f"{name}: weight dtype {weight.dtype} differs from x dtype {x.dtype}; "
                               "cast the weight (model.to(dtype))")
    if not weight.is_contiguous():
        raise KernelInputError(f"{name}: weight must be contiguous; call .contiguous()")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, backend: str | None = None) -> torch.Tensor:
    """out = weight * x / sqrt(mean(x^2, -1) + eps), statistics in fp32."""
    _check("rms_norm", x)
    _check_weight("rms_norm", x, weight)
    chosen = _pick(x, backend)
    if chosen == "cuda":
        return _rms.rms_norm_cuda(x, weight, eps)
    if chosen == "triton":
        return _rms.rms_norm_triton(x, weight, eps)
    return _rms.rms_norm_reference(x, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                       backend: str | None = None) -> torch.Tensor:
    """residual += x (in place); returns rms_norm(residual, weight, eps)."""
    _check("fused_add_rms_norm", x)
    _check("fused_add_rms_norm", residual)
    _check_weight("fused_add_rms_norm", x, weight)
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise KernelInputError(f"fused_add_rms_norm: residual {tuple(residual.shape)} {residual.dtype} "
                               f"{residual.device} must match x {tuple(x.shape)} {x.dtype} {x.device}")
    chosen = _pick(x, backend)
    if chosen == "cuda":
        return _rms.fused_add_rms_norm_cuda(x, residual, weight, eps)
    if chosen == "triton":
        return _rms.fused_add_rms_norm_triton(x, residual, weight, eps)
    return _rms.fused_add_rms_norm_reference(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """gate_up [..., 2I] = [gate | up] -> silu(gate) * up, shape [..., I]."""
    _check("silu_and_mul", gate_up)
    if gate_up.shape[-1] % 2:
        raise KernelInputError(f"silu_and_mul: last dimension must be even (gate then up), "
                               f"got shape {tuple(gate_up.shape)}")
    chosen = _pick(gate_up, backend)
    if chosen == "cuda":
        return _silu.silu_and_mul_cuda(gate_up)
    if chosen == "triton":
        return _silu.silu_and_mul_triton(gate_up)
    return _silu.silu_and_mul_reference(gate_up)
