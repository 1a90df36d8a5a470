"""Batch-1 W8A8 GEMVs with the per-token activation quantization fused in: int8 (SmoothQuant's
arithmetic) and FP8 e4m3 row-wise (torch._scaled_mm's), one Triton launch per linear.

At one token the eager path pays more for quantizing x than for the matmul: amax, divide, round,
clamp, cast (and, for torch._int_mm, padding to 17 rows) are several kernels per linear, and the
int8 / e4m3 GEMMs themselves pad M to a tensor-core tile. Here each CTA streams BLOCK_N weight rows
(contiguous, as kernels/quant_gemv.py's GEMVs), computes the token's scale itself (a pre-pass over
x, which is L2-resident: K * 2 bytes), quantizes its x tile in registers and accumulates in fp32:

    int8:  y[n] = sx * sw[n] * sum_k xq[k] * w[n, k],  xq = round(x / sx) in [-127, 127], sx = max|x| / 127
    fp8:   y[n] = sx * sw[n] * sum_k e4m3(x[k] / sx) * w[n, k],  sx = max|x| / 448, w e4m3 (N, K)

the same quantization grids as quant.fast_linear.quantize_tokens_int8 and quant.qlinear.quantize_fp8
(sx = max|x| times the fp32 reciprocal of 127 or 448, as torch computes it; x / sx correctly
rounded (div_rn); round half to even; e4m3 rounding emulated exactly in fp32:
round to the binade's 3-bit mantissa, subnormal step 2^-9), so the codes match torch's bit for bit
and only the fp32 summation order differs from the reference (int8 products are exact integers;
sums of them stay exact below 2^24 per partial). Weight bytes: int8 read as int32 words (4 codes),
sign bits flipped and widened by the 2^23 magic as in quant_gemv; fp8 loaded as e4m3 and converted.
Configs: a small set tuned per shape by quant_gemv.tuned_config (each checked against the fp32
reference of the quantized operands first), together with kernels/gemv8.py's row-streaming kernel
(the same grids fused into its K loop: ACT_INT8 / ACT_FP8), whichever is faster on the GPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from kernels.quant_gemv import MAGIC, Config, tuned_config

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

FP8_MAX = 448.0
# block_n rows per CTA, block_k inputs per tile, warps, pipelining (use_dot / split_k unused: 1 CTA per row block)
CONFIGS = (Config(8, 512, 1, False, 4, 3), Config(16, 512, 1, False, 4, 3), Config(4, 1024, 1, False, 4, 3),
           Config(16, 256, 1, False, 2, 3), Config(8, 1024, 1, False, 8, 2), Config(32, 256, 1, False, 4, 3))

if triton is not None:
    @triton.jit
    def _row_scale(x_row, K, QMAX: tl.constexpr, BLOCK_K: tl.constexpr):
        """max|x| / QMAX over one row of x (clamped below as the torch references clamp)."""
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            amax = tl.maximum(amax, tl.abs(tl.load(x_row + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)))
        # times the fp32 reciprocal of QMAX: the scale torch computes (quant.rtn.quantize_activation,
        # quant.qlinear.quantize_fp8 multiply by it; CUDA's division by a scalar does the same). A correctly
        # rounded amax / 127 differed by an ulp on the H200 and flipped an activation code.
        s = tl.max(amax, axis=0) * (1.0 / QMAX)
        if QMAX == 127.0:
            s = tl.maximum(s, 1e-8)
        else:
            s = tl.maximum(s, 1e-12)
        return s

    @triton.jit
    def _rne(v):
        """v rounded to the nearest integer, ties to even (|v| < 2^22): the fp32 magic-number round."""
        return (v + 12582912.0) - 12582912.0

    @triton.jit
    def _e4m3(v):
        """v (|v| <= 448) rounded to the nearest e4m3fn value, ties to even, in fp32: the ulp of v's
        binade is 2^(e - 3) for normal e4m3 values (e >= -6), 2^-9 below."""
        e = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased fp32 exponent
        e = tl.maximum(e, 127 - 6) - 3
        ulp = (e << 23).to(tl.float32, bitcast=True)
        inv = ((254 - e) << 23).to(tl.float32, bitcast=True)  # 1 / ulp, exact (a power of two)
        return _rne(v * inv) * ulp

    @triton.jit
    def _w8a8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, magic,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
        """int8 W8A8 at one token per program row m: w int32 words (N, K / 4) of int8 codes, s (N,)."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn = tl.where(n_ok, rn, 0)
        x_row = x_ptr + pid_m * stride_xm
        sx = _row_scale(x_row, K, 127.0, BLOCK_K)
        rc = tl.arange(0, BLOCK_K // 4)
        K4 = K // 4
        part = tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            u = tl.load(w_ptr + rn[:, None] * K4 + (k0 // 4 + rc)[None, :]) ^ -2139062144  # bytes as q + 128
            hi = (u.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)
            xt = tl.load(x_row + k0 + rc[:, None] * 4 + tl.arange(0, 4)[None, :]).to(tl.float32)
            xq = tl.minimum(tl.maximum(_rne(tl.math.div_rn(xt, sx)), -127.0), 127.0)  # (BLOCK_K / 4, 4)
            e0, e1 = tl.split(tl.reshape(xq, (BLOCK_K // 4, 2, 2)))
            x0, x2 = tl.split(e0)
            x1, x3 = tl.split(e1)
            part += (((u & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0) * x0[None, :]
            part += (((u & 0xFF00) | magic).to(tl.float32, bitcast=True) - 8421376.0) * (x1 * (1.0 / 256))[None, :]
            part += (((hi & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0) * x2[None, :]
            part += (((hi & 0xFF00) | magic).to(tl.float32, bitcast=True) - 8421376.0) * (x3 * (1.0 / 256))[None, :]
        sw = tl.load(s_ptr + rn).to(tl.float32)
        y = tl.sum(part, axis=1) * sw * sx
        tl.store(y_ptr + pid_m * N + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _fp8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
        """FP8 row-wise W8A8 at one token per program row m: w e4m3 (N, K), s fp32 (N,)."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn = tl.where(n_ok, rn, 0)
        x_row = x_ptr + pid_m * stride_xm
        sx = _row_scale(x_row, K, 448.0, BLOCK_K)
        rk = tl.arange(0, BLOCK_K)
        part = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = tl.load(w_ptr + rn[:, None] * K + (k0 + rk)[None, :]).to(tl.float32)
            xt = tl.load(x_row + k0 + rk).to(tl.float32)
            xq = _e4m3(tl.minimum(tl.maximum(tl.math.div_rn(xt, sx), -448.0), 448.0))
            part += w * xq[None, :]
        sw = tl.load(s_ptr + rn).to(tl.float32)
        y = tl.sum(part, axis=1) * sw * sx
        tl.store(y_ptr + pid_m * N + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def configs(K: int) -> list[Config]:
    """The candidates whose BLOCK_K divides K."""
    return [c for c in CONFIGS if K % c.block_k == 0]


def _quant_ref(x2: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (quantized x as values, per-token scale) with the torch references' grids."""
    xf = x2.float()
    if qmax == 127.0:
        s = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / 127.0)).clamp(min=1e-8)
        return torch.clamp(torch.round(xf / s), -127, 127), s
    s = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / FP8_MAX)).clamp(min=1e-12)
    return (xf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float(), s


def w8a8_gemv(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M, K) contiguous, w int8 (N, K) contiguous, scale (N,) -> (M, N) in x2's dtype (module docstring)."""
    from kernels import gemv8

    M, K = x2.shape
    N = w.shape[0]
    cands = gemv8.configs(K, gemv8.INT8) + configs(K)  # the row-streaming family first, then this module's
    assert cands and w.is_contiguous() and x2.stride(1) == 1, f"no W8A8 GEMV config for K={K}"
    w32 = w.view(torch.int32)

    def run(cfg, w32=w32, s=scale):
        if isinstance(cfg, gemv8.Gemv8Config):
            return gemv8.launch(cfg, x2, w32.view(torch.int8), s, gemv8.INT8, gemv8.ACT_INT8)
        y = torch.empty(M, N, device=x2.device, dtype=x2.dtype)
        _w8a8_gemv_kernel[(triton.cdiv(N, cfg.block_n), M)](x2, w32, s, y, N, K, x2.stride(0), MAGIC, cfg.block_n,
                                                             cfg.block_k, cfg.stages, num_warps=cfg.num_warps)
        return y

    def ref(w32=w32, s=scale):
        xq, sx = _quant_ref(x2, 127.0)
        return (xq @ w32.view(torch.int8).float().T) * sx * s.float()

    cfg = config or tuned_config(("w8a8", N, K, M, x2.dtype, x2.device), cands, run, (w32, scale), ref)
    return run(cfg)


def fp8_gemv(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M, K) contiguous, w float8_e4m3fn (N, K) contiguous, scale fp32 (N,) -> (M, N) in x2's dtype."""
    from kernels import gemv8

    M, K = x2.shape
    N = w.shape[0]
    cands = gemv8.configs(K, gemv8.FP8) + configs(K)  # the row-streaming family first, then this module's
    assert cands and w.is_contiguous() and x2.stride(1) == 1, f"no FP8 GEMV config for K={K}"

    def run(cfg, w=w, s=scale):
        if isinstance(cfg, gemv8.Gemv8Config):
            return gemv8.launch(cfg, x2, w, s, gemv8.FP8, gemv8.ACT_FP8)
        y = torch.empty(M, N, device=x2.device, dtype=x2.dtype)
        _fp8_gemv_kernel[(triton.cdiv(N, cfg.block_n), M)](x2, w, s, y, N, K, x2.stride(0), cfg.block_n,
                                                            cfg.block_k, cfg.stages, num_warps=cfg.num_warps)
        return y

    def ref(w=w, s=scale):
        xq, sx = _quant_ref(x2, FP8_MAX)
        return (xq @ w.float().T) * sx * s.float()

    cfg = config or tuned_config(("fp8", N, K, M, x2.dtype, x2.device), cands, run, (w, scale), ref)
    return run(cfg)
