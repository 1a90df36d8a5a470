"""Batch-1 row-streaming GEMVs for 8- and 16-bit weights: one Triton kernel family for W8A16 int8
(per-row scale), FP8 e4m3 weight-only (per-row scale, bf16 activations), bf16 (no scale), and the
one-token W8A8 paths with the per-token activation quantization fused (int8, FP8 row-wise).

    y[m, n] = s[n] * sx[m] * sum_k A(x[m, k]) * w[n, k]      (s = 1 for bf16; sx, A = identity unless ACT)

Decode at batch 1 is a stream of weight bytes; the kernel is built to keep HBM busy and do little else:
  - each program owns BLOCK_N whole rows (no split-K, no atomics, no second reduction launch) and
    walks K in tiles of BLOCK_W 32-bit words per row; Triton sees 16-divisible row starts (KW is a
    specialised argument), so each thread issues 16-byte loads, and tl.range(num_stages) keeps STAGES
    tiles in flight per program (cp.async on sm_90): BLOCK_N x BLOCK_W x 4 x STAGES bytes per program;
  - fp32 partials per (row, word position), summed across threads once at the end; the row scale (and
    the token scale) applied once per row;
  - int8: the word's sign bits flipped once, each byte OR-ed into the 2^23 magic (one LOP3, one FSUB,
    one FFMA per weight, no I2F: kernels/quant_gemv.py's trick); bf16: the two halves of a word are
    fp32 by a shift / a mask (exact, no conversion instruction); e4m3: Triton's conversion (cvt of
    e4m3x2 pairs on sm_90);
  - ACT=1/2: the token's scale is a pre-pass over x (L2-resident) and each tile of x is quantized in
    registers with kernels.act_quant_gemv's exact grid (max|x| * fp32(1/qmax), div_rn, ties to even,
    exact e4m3 rounding), amortised over the program's BLOCK_N rows.
Candidates (GEMV8_CONFIGS) are swept per shape by kernels.quant_gemv.tuned_config together with the
older kernels of the same op (W8A16: quant_gemv.CONFIGS_W8; W8A8/FP8: act_quant_gemv.CONFIGS), each
checked against the op's fp32 dequantized reference before it is timed, so the pick cannot regress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from kernels import quant_gemv
from kernels.quant_gemv import MAGIC, tuned_config

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

INT8, FP8, BF16 = 0, 1, 2  # WKIND: how a weight row is stored
NO_ACT, ACT_INT8, ACT_FP8 = 0, 1, 2  # ACT: fused per-token activation quantization
MAX_ROWS = 16  # x rows served (one program row each; the weights are re-read per row: decode-sized M only)


@dataclass(frozen=True)
class Gemv8Config:
    """One launch shape of _gemv8_kernel: rows per program, 32-bit words per row per tile, warps, stages."""

    block_n: int
    block_w: int
    num_warps: int = 4
    stages: int = 3

    def __str__(self) -> str:
        return f"g8_n{self.block_n}_w{self.block_w}_w{self.num_warps}_p{self.stages}"

    def block_k(self, wkind: int) -> int:
        """Inputs per tile: 4 per word for 8-bit weights, 2 for bf16."""
        return self.block_w * (2 if wkind == BF16 else 4)


# Rows per program 2..32 (a 4096-row layer: 2,048..128 programs), 0.25..2 KB of each row per tile,
# 2, 4 or 8 warps, 1..4 stages: 1..16 KB per program per tile, up to ~48 KB in flight with the stages.
# All compile for sm_90 (Triton 3.9 here, 2026-11-30) without spills: 40-162 registers, no STL/LDL, no I2F,
# LDGSTS (cp.async) in the pipelined ones.
GEMV8_CONFIGS = (
    Gemv8Config(8, 256, 4, 3), Gemv8Config(4, 256, 4, 3), Gemv8Config(16, 128, 4, 3), Gemv8Config(8, 128, 4, 4),
    Gemv8Config(4, 512, 4, 2), Gemv8Config(2, 512, 4, 3), Gemv8Config(16, 256, 8, 3), Gemv8Config(8, 512, 8, 2),
    Gemv8Config(32, 64, 4, 4), Gemv8Config(32, 128, 8, 3), Gemv8Config(8, 256, 4, 1), Gemv8Config(16, 128, 4, 1),
    Gemv8Config(4, 128, 2, 4), Gemv8Config(2, 256, 2, 4), Gemv8Config(4, 512, 8, 3), Gemv8Config(8, 256, 8, 4),
)

if triton is not None:
    from kernels.act_quant_gemv import _e4m3, _row_scale, _rne

    @triton.jit
    def _gemv8_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, KW, stride_xm, magic,
                      WKIND: tl.constexpr, ACT: tl.constexpr, HAS_SCALE: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, STAGES: tl.constexpr):
        """One program: BLOCK_N rows of y for x row program_id(1). KW: row stride of w in its elements
        (int32 words for int8 / bf16, bytes for e4m3)."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn = tl.where(n_ok, rn, 0)  # the last block re-reads row 0 and stores nothing there: no K masks
        x_row = x_ptr + pid_m * stride_xm
        w_rows = w_ptr + rn[:, None] * KW
        if ACT == 1:
            sx = _row_scale(x_row, K, 127.0, 256)
        elif ACT == 2:
            sx = _row_scale(x_row, K, 448.0, 256)
        rw = tl.arange(0, BLOCK_W)
        if WKIND == 1:
            rk = tl.arange(0, BLOCK_W * 4)
            part = tl.zeros((BLOCK_N, BLOCK_W * 4), dtype=tl.float32)
            for k0 in tl.range(0, K, BLOCK_W * 4, num_stages=STAGES):
                w = tl.load(w_rows + (k0 + rk)[None, :]).to(tl.float32)
                xt = tl.load(x_row + k0 + rk).to(tl.float32)
                if ACT == 2:
                    xt = _e4m3(tl.minimum(tl.maximum(tl.math.div_rn(xt, sx), -448.0), 448.0))
                part += w * xt[None, :]
        elif WKIND == 0:
            part = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
            for t in tl.range(0, KW, BLOCK_W, num_stages=STAGES):
                u = tl.load(w_rows + (t + rw)[None, :]) ^ -2139062144  # bytes read as q + 128
                hi = (u.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)
                xt = tl.load(x_row + t * 4 + rw[:, None] * 4 + tl.arange(0, 4)[None, :]).to(tl.float32)
                if ACT == 1:
                    xt = tl.minimum(tl.maximum(_rne(tl.math.div_rn(xt, sx)), -127.0), 127.0)
                e0, e1 = tl.split(tl.reshape(xt, (BLOCK_W, 2, 2)))  # k % 4 = 2a + b: e0 = b 0, e1 = b 1
                x0, x2 = tl.split(e0)
                x1, x3 = tl.split(e1)
                part += (((u & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0) * x0[None, :]
                part += (((u & 0xFF00) | magic).to(tl.float32, bitcast=True) - 8421376.0) * (x1 * (1.0 / 256))[None, :]
                part += (((hi & 0xFF) | magic).to(tl.float32, bitcast=True) - 8388736.0) * x2[None, :]
                part += (((hi & 0xFF00) | magic).to(tl.float32, bitcast=True) - 8421376.0) * (x3 * (1.0 / 256))[None, :]
        else:
            part = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
            for t in tl.range(0, KW, BLOCK_W, num_stages=STAGES):
                u = tl.load(w_rows + (t + rw)[None, :])  # two bf16 per word, element 2i in the low half
                lo = (u << 16).to(tl.float32, bitcast=True)
                hv = (u & -65536).to(tl.float32, bitcast=True)
                xt = tl.load(x_row + t * 2 + rw[:, None] * 2 + tl.arange(0, 2)[None, :]).to(tl.float32)
                x0, x1 = tl.split(xt)
                part += lo * x0[None, :]  # two FFMAs per word (one expression would be FMUL + FFMA + FADD)
                part += hv * x1[None, :]
        y = tl.sum(part, axis=1)
        if HAS_SCALE:
            y = y * tl.load(s_ptr + rn).to(tl.float32)
        if ACT != 0:
            y = y * sx
        tl.store(y_ptr + pid_m * N + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def configs(K: int, wkind: int) -> list[Gemv8Config]:
    """GEMV8_CONFIGS whose tile divides K."""
    return [c for c in GEMV8_CONFIGS if K % c.block_k(wkind) == 0]


def launch(cfg: Gemv8Config, x2: torch.Tensor, w: torch.Tensor, scale: Optional[torch.Tensor], wkind: int,
           act: int = NO_ACT) -> torch.Tensor:
    """Run one config: x2 (M <= 16, K) contiguous rows; w (N, K) int8 / e4m3 / bf16 contiguous; scale (N,)
    or None -> (M, N) in x2's dtype."""
    M, K = x2.shape
    N = w.shape[0]
    assert x2.stride(1) == 1 and w.is_contiguous() and w.shape[1] == K and M <= MAX_ROWS, \
        (tuple(x2.shape), tuple(w.shape), M)
    if wkind == INT8:
        wv, kw = w.view(torch.int32), K // 4
    elif wkind == BF16:
        wv, kw = w.view(torch.int32), K // 2
    else:
        wv, kw = w, K
    y = torch.empty(M, N, device=x2.device, dtype=x2.dtype)
    s = scale if scale is not None else y
    _gemv8_kernel[(triton.cdiv(N, cfg.block_n), M)](
        x2, wv, s, y, N, K, kw, x2.stride(0), MAGIC, wkind, act, scale is not None,
        cfg.block_n, cfg.block_w, cfg.stages, num_warps=cfg.num_warps)
    return y


def _tuned(tag: str, x2, w, scale, cands, run, ref, config):
    """config, or tuned_config's pick over cands (each checked against ref first) for this shape."""
    M, K = x2.shape
    assert cands, f"no {tag} GEMV config for K={K}"
    if config is not None:
        return config
    weights = (w,) if scale is None else (w, scale)
    return tuned_config((tag, w.shape[0], K, M, x2.dtype, x2.device), cands, run, weights, ref)


def w8a16_gemv(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, config=None) -> torch.Tensor:
    """W8A16 at M = 1: x2 (1, K), w int8 (N, K), scale (N,) -> (1, N); tuned over GEMV8_CONFIGS and
    quant_gemv's split-K candidates (CONFIGS_W8)."""
    K = x2.shape[1]
    cands = configs(K, INT8) + quant_gemv.w8_configs(x2.shape[0], K)

    def run(cfg, w=w, s=scale):
        if isinstance(cfg, Gemv8Config):
            return launch(cfg, x2, w, s, INT8)
        return quant_gemv.w8a16_skinny(x2, w, s, config=cfg)

    def ref(w=w, s=scale):
        return x2.float() @ (w.float() * s.float()[:, None]).T

    return run(_tuned("w8g", x2, w, scale, cands, run, ref, config))


def fp8_wo_gemv(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, config=None) -> torch.Tensor:
    """FP8 weight-only: x2 (M <= 16, K) bf16/fp16/fp32, w float8_e4m3fn (N, K), scale (N,) -> (M, N)."""
    cands = configs(x2.shape[1], FP8)

    def run(cfg, w=w, s=scale):
        return launch(cfg, x2, w, s, FP8)

    def ref(w=w, s=scale):
        return x2.float() @ (w.float() * s.float()[:, None]).T

    return run(_tuned("fp8wo", x2, w, scale, cands, run, ref, config))


def bf16_gemv(x2: torch.Tensor, w: torch.Tensor, config=None) -> torch.Tensor:
    """y = x2 @ w^T for bf16 w (N, K): the same row-streaming kernel, no scale (a bench row, not wired in)."""
    cands = configs(x2.shape[1], BF16)

    def run(cfg, w=w):
        return launch(cfg, x2, w, None, BF16)

    def ref(w=w):
        return x2.float() @ w.float().T

    return run(_tuned("bf16g", x2, w, None, cands, run, ref, config))
