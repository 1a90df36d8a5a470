"""Shared cases for the kernel parity tests (CPU and GPU files use the same rules).

Every face is compared with a float64 reference on fresh random inputs that
carry outliers; outputs are poisoned with NaN first, so an element the kernel
never wrote fails. Error = max|got - ref| / max|ref| (ref is never all zero).

Tolerances, per output dtype:
  float32  2e-6: fp32 sums of up to 16K squares in a different order, ~1e-7 each.
  float16  2e-3: two roundings to fp16 (normalised value, product), 2^-11 each.
  bfloat16 1e-2: two roundings to bf16 (8-bit mantissa), 2^-8 each at worst.
"""

from __future__ import annotations

import torch

from kernels import rms_norm as rms
from kernels import silu_and_mul as silu

TOLERANCE = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
EPS = 1e-6

# (leading shape, hidden): decode rows, odd rows, 3-D, sizes not multiple of 8, wide rows.
NORM_SHAPES = [((1,), 64), ((19,), 111), ((2, 3), 4096), ((5,), 1000), ((7,), 4097), ((3,), 8192),
               ((2,), 12289), ((2,), 16384), ((1,), 20000)]
SILU_SHAPES = [((1,), 64), ((19,), 111), ((2, 3), 4096), ((4,), 14336), ((3,), 1001)]


def random_input(shape, dtype, device, seed):
    """Unit-normal values with a few large outliers (x50), in `dtype`."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    flat = x.view(-1)
    idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 200),), generator=g)
    flat[idx] *= 50.0
    return x.to(dtype).to(device)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref|, NaN-propagating (an unwritten NaN gives inf)."""
    assert ref.abs().max() > 0, "reference is all zeros: the comparison would be meaningless"
    diff = (got.double() - ref.double()).abs()
    if torch.isnan(diff).any():
        return float("inf")
    return (diff.max() / ref.double().abs().max()).item()


def ref_rms_norm64(x, w):
    h = x.double()
    return w.double() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)


def ref_silu64(gate_up):
    gate, up = gate_up.double().chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def poisoned_like(x: torch.Tensor, shape=None) -> torch.Tensor:
    return torch.full(shape if shape is not None else x.shape, float("nan"), dtype=x.dtype, device=x.device)


def check_rms_norm(face: str, lead, hidden, dtype, device, seed=0):
    """Runs one RMSNorm face on poisoned output and returns its error against fp64."""
    x = random_input((*lead, hidden), dtype, device, seed)
    w = random_input((hidden,), dtype, device, seed + 1)
    out = poisoned_like(x)
    if face == "reference":
        out = rms.rms_norm_reference(x, w, EPS)
    else:
        getattr(rms, f"rms_norm_{face}")(x, w, EPS, out=out)
    return rel_err(out, ref_rms_norm64(x, w))


def check_fused_add(face: str, lead, hidden, dtype, device, seed=0):
    """Runs one fused add+RMSNorm face; returns (error of out, error of residual)."""
    x = random_input((*lead, hidden), dtype, device, seed)
    res = random_input((*lead, hidden), dtype, device, seed + 2)
    w = random_input((hidden,), dtype, device, seed + 1)
    want_res = res.double() + x.double()
    want = ref_rms_norm64(want_res, w)
    out = poisoned_like(x)
    if face == "reference":
        out = rms.fused_add_rms_norm_reference(x, res, w, EPS)
    else:
        getattr(rms, f"fused_add_rms_norm_{face}")(x, res, w, EPS, out=out)
    return rel_err(out, want), rel_err(res, want_res)


def check_silu(face: str, lead, inter, dtype, device, seed=0):
    """Runs one silu_and_mul face on poisoned output and returns its error against fp64."""
    gate_up = random_input((*lead, 2 * inter), dtype, device, seed)
    out = poisoned_like(gate_up, (*lead, inter))
    if face == "reference":
        out = silu.silu_and_mul_reference(gate_up)
    else:
        getattr(silu, f"silu_and_mul_{face}")(gate_up, out=out)
    return rel_err(out, ref_silu64(gate_up))
