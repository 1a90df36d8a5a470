"""Shared cases for the kernel parity tests (CPU and GPU files, and the planted-fault test).

Every face is compared with a float64 reference on fresh seeded random inputs that carry
outliers (x50), with one row scaled to RMS ~1e-3 (there eps = 1e-6 is as large as
mean(x^2), so a face that drops or changes eps misses by O(1)). Outputs are poisoned with
NaN first, so an element the kernel never wrote fails. Each element must satisfy
|got - ref| <= atol + rtol * |ref| (parity.tolerance), per output dtype.
u is the unit round-off (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4, fp32 2^-24 = 6e-8).

  dtype     rtol    atol   why                                             measured worst |diff|/|ref|
  float32   1e-6    1e-9   fp32 sums in another order, a few u             2.7e-7 (fused out, both faces)
  float16   2e-3    4e-6   up to 4 roundings of u (fused: residual, rstd   1.4e-3 (fused out, both faces)
                           through it, normalised row, product)
  bfloat16  1.6e-2  1e-30  the same 4u                                     1.1e-2 (fused out, reference)
  bf16, Triton interpreted: 3.2e-2, twice that: the interpreter converts   1.7e-2 (fused out)
           fp32 -> bf16 by truncation (up to one ulp, 2u), not round-to-nearest (checked directly)

atol only covers outputs the relative bound cannot: (fp16) the normalised row is rounded to
fp16 before the weight multiply (HF's order), and where it falls below fp16's smallest normal
(6.1e-5) it carries up to half the subnormal spacing, 3e-8, absolute, which a weight of up to
~225 (x50 outliers) scales to 6.7e-6 at most: atol 4e-6 (H200, 2026-11-29, CUDA and Triton
faces at 8192 x 4096: worst |diff| 5.3e-7 at |ref| 1.3e-5, 4.2x the old 1e-7 atol); (fp32)
silu's exp on the GPU (ex2.approx after x * log2(e)) has relative error ~|g| * 6e-8, above
rtol for |g| > 16, where |silu(g) * up| <= 16 * e^-16 * 225 and the error stays below 3.4e-10:
atol 1e-9 (H200: worst |diff| 1.6e-26 at |ref| 5.5e-21, 3.4x the old 1e-30 atol; the CPU's
exp is exact to rounding). Every other element is a scaled input (or silu(g) * u), so its
error is relative to itself; a zeroed or skipped element of |ref| ~ 1e-3 or more still misses
its bound by 100x or more. Measured on the CPU (2026-11-26) over NORM_SHAPES/SILU_SHAPES
(the interpreter over INTERP_NORM and three silu shapes), seeds 0..2, fp32/fp16/bf16: the worst
element used 0.70 of its bound. The CUDA face rounds at the same points as the reference
(fp32 statistics, round-to-nearest of the normalised row, then of the product), so
TOLERANCE holds for it, and for compiled Triton, unchanged.
"""

from __future__ import annotations

import torch

from kernels import rms_norm as rms
from kernels import silu_and_mul as silu
from parity.tolerance import Tol, assert_close

TOLERANCE = {torch.float32: Tol(atol=1e-9, rtol=1e-6), torch.float16: Tol(atol=4e-6, rtol=2e-3),
             torch.bfloat16: Tol(atol=1e-30, rtol=1.6e-2)}
INTERPRETED_BF16 = Tol(atol=1e-30, rtol=3.2e-2)  # Triton's interpreter truncates fp32 -> bf16
EPS = 1e-6
SMALL_ROW_SCALE = 1e-3  # the last row's scale: mean(x^2) ~ 1e-6 ~ EPS

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


def norm_input(shape, dtype, device, seed):
    """random_input whose last row (of several) is scaled to RMS ~1e-3, where eps matters."""
    x = random_input(shape, dtype, device, seed)
    rows = x.view(-1, shape[-1])
    if rows.shape[0] > 1:
        rows[-1] *= SMALL_ROW_SCALE
    return x


def ref_rms_norm64(x, w):
    """RMSNorm in float64."""
    h = x.double()
    return w.double() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)


def ref_silu64(gate_up):
    """silu(gate) * up in float64."""
    gate, up = gate_up.double().chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def poisoned_like(x: torch.Tensor, shape=None) -> torch.Tensor:
    """A NaN-filled tensor of x's dtype and device (x's shape unless given)."""
    return torch.full(shape if shape is not None else x.shape, float("nan"), dtype=x.dtype, device=x.device)


def run_rms_norm(face: str, lead, hidden, dtype, device, seed=0):
    """One RMSNorm face on poisoned output: (got, fp64 ref)."""
    x = norm_input((*lead, hidden), dtype, device, seed)
    w = random_input((hidden,), dtype, device, seed + 1)
    out = poisoned_like(x)
    if face == "reference":
        out = rms.rms_norm_reference(x, w, EPS)
    else:
        getattr(rms, f"rms_norm_{face}")(x, w, EPS, out=out)
    return out, ref_rms_norm64(x, w)


def run_fused_add(face: str, lead, hidden, dtype, device, seed=0):
    """One fused add+RMSNorm face: ((out, fp64 ref), (residual, fp64 ref))."""
    x = norm_input((*lead, hidden), dtype, device, seed)
    res = norm_input((*lead, hidden), dtype, device, seed + 2)
    w = random_input((hidden,), dtype, device, seed + 1)
    want_res = res.double() + x.double()
    want = ref_rms_norm64(want_res, w)
    out = poisoned_like(x)
    if face == "reference":
        out = rms.fused_add_rms_norm_reference(x, res, w, EPS)
    else:
        getattr(rms, f"fused_add_rms_norm_{face}")(x, res, w, EPS, out=out)
    return (out, want), (res, want_res)


def run_silu(face: str, lead, inter, dtype, device, seed=0):
    """One silu_and_mul face on poisoned output: (got, fp64 ref)."""
    gate_up = random_input((*lead, 2 * inter), dtype, device, seed)
    out = poisoned_like(gate_up, (*lead, inter))
    if face == "reference":
        out = silu.silu_and_mul_reference(gate_up)
    else:
        getattr(silu, f"silu_and_mul_{face}")(gate_up, out=out)
    return out, ref_silu64(gate_up)


def tolerance(dtype, face: str, device) -> Tol:
    """The bound for one face: TOLERANCE[dtype], or INTERPRETED_BF16 for bf16 Triton on the CPU."""
    if face == "triton" and dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        return INTERPRETED_BF16
    return TOLERANCE[dtype]


def check_rms_norm(face: str, lead, hidden, dtype, device, seed=0):
    """Asserts one RMSNorm face is within TOLERANCE[dtype] of fp64 at every element."""
    got, ref = run_rms_norm(face, lead, hidden, dtype, device, seed)
    return assert_close(got, ref, tolerance(dtype, face, device), f"rms_norm {face} {dtype} {(*lead, hidden)}")


def check_fused_add(face: str, lead, hidden, dtype, device, seed=0):
    """Asserts one fused add+RMSNorm face (its output and the updated residual) against fp64."""
    (out, want), (res, want_res) = run_fused_add(face, lead, hidden, dtype, device, seed)
    what = f"fused_add_rms_norm {face} {dtype} {(*lead, hidden)}"
    assert_close(res, want_res, tolerance(dtype, face, device), what + " residual")
    return assert_close(out, want, tolerance(dtype, face, device), what + " out")


def check_silu(face: str, lead, inter, dtype, device, seed=0):
    """Asserts one silu_and_mul face is within TOLERANCE[dtype] of fp64 at every element."""
    got, ref = run_silu(face, lead, inter, dtype, device, seed)
    return assert_close(got, ref, tolerance(dtype, face, device), f"silu_and_mul {face} {dtype} {(*lead, inter)}")
