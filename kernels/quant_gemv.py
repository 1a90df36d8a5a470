"""Skinny (decode, M <= 16) weight-only quantized matmuls in Triton: W4A16 (group-wise) and W8A16.

Same math and operands as kernels/quant_matmul.py (whose w4a16_matmul / w8a16_matmul dispatch here
for M <= 16):
    W4A16: y[m, n] = sum_k x[m, k] * s[k // gs, n] * (q[k, n] - z[k // gs, n]),
           qweight int32 (K / 8, N) GPTQ-packed along K (code k at bits 4 * (k % 8) of word k // 8)
    W8A16: y[m, n] = s[n] * sum_k x[m, k] * w[n, k],  w int8 (N, K) read as int32 words (N, K / 4)

Decode is weight-bound: the time is the packed weight bytes over HBM bandwidth, so the kernel is
built to stream them and do little else per weight (the ideas of Marlin, tinygemm and GemLite's
split-K GEMV, written anew for Triton):
  - split-K: the grid is (N / BLOCK_N, SPLIT_K, M / BLOCK_M), so hundreds of CTAs stream disjoint
    slices of the weight at batch 1 (the prefill-shaped kernel launched N / 64 CTAs: 64 on a
    4096-wide layer, a third of an H200). Partial sums meet in an fp32 buffer by atomic add
    (SPLIT_K > 1) or are stored directly in x's dtype (SPLIT_K = 1).
  - whole words, loaded once: each tile loads BLOCK_K / 8 (W4) or BLOCK_K / 4 (W8) rows of int32
    words, coalesced along N (W4) or K (W8); the old kernel gathered each word 8 times.
  - dequantization without int->float conversions (a 16/clk/SM instruction on Hopper): for the
    code j of a word, (word & (mask << 4j)) | 0x4B000000 read as fp32 is 2^23 + q * 16^j exactly
    (the upper four codes first shift the word by 16, once per word); subtracting 2^23 + z * 16^j is
    exact, and the 16^-j is folded into x (or the scale), so a weight costs one LOP3, one FSUB and
    one FMA. W8 flips the sign bits (xor 0x80 per byte, once per word) so bytes read as q + 128.
  - scales and zeros load once per (group, BLOCK_N) tile (BLOCK_K divides the group size); the
    FMA path loads a tile's x once and splits it into its code positions in registers (tl.split).
  - the K loop is software-pipelined (tl.range num_stages: cp.async prefetch of the next tiles
    on sm_90), with unpipelined configs in the set too.
  - two inner products, chosen by the autotuner: USE_DOT=0 multiplies on the CUDA cores (M = 1),
    USE_DOT=1 casts the dequantized tile to x's dtype and calls tl.dot (tensor cores, M <= 16; one
    k=BLOCK_K/8 dot per code position j, which is the same sum in another order).

The GEMV layout (2026-11-30 rework, `w4a16_gemv`): decode at M = 1 reads W4 g128 from a layout
re-packed once at load (pack_w4_gemv): row n's int32 words contiguous (N, K / 8), each 128-code group
a 16-word unit whose word w holds input 128 g + _gemv_k(w, j) at bits 4j (since the gemv4 work: the
order kernels/csrc/gemv4.cu's tensor-core lanes read, see pack_w4_gemv; the Triton kernels gather x_j,
code j's inputs of the 16 words, in that order), scales / zeros (N, G). _w4_gemv_kernel gives each CTA
BLOCK_N whole rows (split 1: one launch, direct store; splits store fp32 partials that _sum_splits_kernel adds, no memset, no
atomics), loads 16 bytes per thread per row (contiguity hints; KW passed so Triton sees 16-divisible
row starts), keeps per-(row, word) fp32 partials, applies the group scale to them once per word and
sums across threads once at the end; the magic is a kernel argument so it stays in a register and
each weight costs one LOP3, one FADD and one FFMA (SASS for sm_90: no constant MOVs in the loop).
FOLD configs (`gemvf`) drop the FADD: each code is shifted to the top of a 1.0 mantissa, x is scaled to
match, and the x-only offsets and the zero point come off once per word (~10% fewer instructions in
the loop's SASS, ~1e-5 relative rounding; the tuner picks whichever is faster).

Configs are an explicit autotune set per M bucket (CONFIGS_W4, CONFIGS_W4_GEMV, CONFIGS_W8);
`tuned_config` checks each candidate once per (kernel, N, K, M bucket, group size, dtype) against the
call's dequantized fp32 reference (`agrees`: a candidate wrong on this GPU is rejected and listed,
never chosen), then times it with triton.testing.do_bench_cudagraph over rotating weight copies
larger than L2 (so the weights come from HBM, as in a decode step) and keeps the fastest. Under graph
capture, the interpreter or a CPU, the bucket's first config is used.
Checked here without a GPU: every config passes the interpreter tests, and compiles for sm_90
(Triton 3.6.0, the GPU machine's, and 3.9; 2026-11-30) with no local-memory spills, no I2F in its
SASS and cp.async (LDGSTS) prefetch in the pipelined configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

MAGIC = 0x4B000000  # fp32 bits of 2^23: OR-ing an integer < 2^23 into its mantissa gives 2^23 + integer
MAGIC_F = 8388608.0
SIGN_FLIP = -2139062144  # 0x80808080 as int32: xor flips each byte's sign bit (int8 q -> q + 128)
MAX_M = 16  # the largest batch this module serves (tl.dot's minimum tile height)
ONE_BITS = 0x3F800000  # fp32 bits of 1.0 (the FOLD variant's exponent; an argument, as MAGIC)


@dataclass(frozen=True)
class Config:
    """One launch shape: tile sizes, split-K factor, inner product (dot or FMA) and warps."""

    block_n: int
    block_k: int
    split_k: int
    use_dot: bool
    num_warps: int = 4
    stages: int = 3  # software-pipelining depth of the K loop (cp.async prefetch of the next tiles); 1 = none
    two_pass: bool = False  # split-K partials stored per split and summed by a second kernel (no memset, no atomics)
    gemv: bool = False  # W4 only: the row-streaming GEMV kernel on the GEMV layout (pack_w4_gemv), M = 1
    fold: bool = False  # with gemv: the offset-folding variant (_w4_gemv_kernel's FOLD: 2 ops per weight)
    mma: bool = False  # GEMV layout, M <= 8: kernels/csrc/gemv4.cu (kernels.gemv4.mma_config)
    block_m: int = 0  # GEMV layout: > 0 = kernels.gemv4's tc tiles (block_m tokens per CTA)

    def __str__(self) -> str:
        if self.mma:
            return f"mma_r{self.block_n // 16}_w{self.split_k}_u{self.block_k // GEMV_GS}"
        if self.block_m:
            return f"tc{'f' if self.fold else ''}_m{self.block_m}_n{self.block_n}_w{self.num_warps}_p{self.stages}"
        kind = ("gemvf" if self.fold else "gemv") if self.gemv else ("dot" if self.use_dot else "fma")
        red = "r" if self.two_pass and self.split_k > 1 else "s"
        return f"{kind}_n{self.block_n}_k{self.block_k}_{red}{self.split_k}_w{self.num_warps}_p{self.stages}"


# The autotune sets, per M bucket (1, or 2..16). The first entry is the default where nothing is
# timed (interpreter, CPU, graph capture before tuning). BLOCK_K: W4 needs it to divide the group
# size (one scale row per tile) and >= 128 for USE_DOT (each per-code dot has k = BLOCK_K / 8 >= 16).
# CONFIGS_W4 / CONFIGS_W8_V1: the split-K kernels as measured on the H200 on 2026-11-30 (GPTQ
# layout; the bench keeps them as the "before" rows).
CONFIGS_W4 = {
    1: (Config(64, 128, 8, False), Config(128, 128, 4, False), Config(128, 128, 8, False),
        Config(256, 128, 4, False, 8), Config(32, 128, 16, False), Config(64, 128, 1, False),
        Config(128, 128, 1, False), Config(64, 128, 8, True), Config(128, 128, 4, True),
        Config(64, 128, 8, False, stages=1), Config(128, 128, 4, False, stages=1)),
    16: (Config(64, 128, 4, True), Config(64, 128, 8, True), Config(128, 128, 4, True),
         Config(128, 128, 1, True), Config(32, 128, 8, True), Config(256, 128, 2, True, 8),
         Config(64, 128, 1, True)),
}
# The GEMV layout (pack_w4_gemv, group size 128): M = 1 runs the row-streaming kernel (BLOCK_N rows
# per CTA, the whole K or a 1/SPLIT_K slice of it; block_k = codes per tile = 8 x words per row);
# M = 2..16 the tensor-core tiles above reading the same layout (SHUF). Candidates span rows per CTA
# (4..32: 28672 / 4 = 7,168 CTAs down to 4096 / 32 = 128), words per row per tile (32..128 = 128..512
# bytes), warps (1 warp x 16 rows: each thread 8 rows, so x_j loads are shared by 8 rows; 4 warps x 4
# rows: 4x the CTAs), pipelining depth and split-K with the two-pass reduction. All compile for sm_90
# (Triton 3.9 here) without spills (SASS: no STL/LDL; 45-252 registers).
CONFIGS_W4_GEMV = {
    1: (Config(8, 512, 1, False, 4, 3, gemv=True), Config(16, 512, 1, False, 1, 3, gemv=True),
        Config(16, 512, 1, False, 2, 3, gemv=True), Config(8, 1024, 1, False, 1, 2, gemv=True),
        Config(16, 1024, 1, False, 2, 2, gemv=True), Config(16, 256, 1, False, 1, 4, gemv=True),
        Config(4, 1024, 1, False, 4, 3, gemv=True), Config(8, 1024, 1, False, 4, 3, gemv=True),
        Config(32, 512, 1, False, 4, 3, gemv=True), Config(16, 512, 2, False, 2, 3, True, gemv=True),
        Config(8, 1024, 4, False, 4, 3, True, gemv=True), Config(16, 512, 4, False, 1, 3, True, gemv=True),
        Config(8, 512, 1, False, 4, 3, gemv=True, fold=True), Config(16, 512, 1, False, 1, 3, gemv=True, fold=True),
        Config(16, 512, 1, False, 2, 3, gemv=True, fold=True), Config(8, 1024, 1, False, 4, 3, gemv=True, fold=True),
        # fallbacks should the row-streaming kernel lose on the GPU: the tensor-core skinny tiles (SHUF), which
        # ran within 1.1-1.3x of the v1 winners at M = 1 on the H200 (2026-11-30)
        Config(64, 128, 8, True, two_pass=True), Config(64, 128, 4, True)),
    16: CONFIGS_W4[16] + (Config(64, 128, 8, True, two_pass=True), Config(128, 128, 4, True, two_pass=True)),
}
CONFIGS_W8_V1 = {
    1: (Config(32, 512, 4, False), Config(64, 256, 4, False), Config(16, 512, 8, False),
        Config(32, 256, 8, False), Config(64, 512, 2, False, 8), Config(32, 512, 1, False),
        Config(64, 256, 1, False), Config(64, 256, 4, True), Config(32, 512, 4, False, stages=1)),
    16: (Config(64, 256, 4, True), Config(64, 128, 8, True), Config(128, 256, 2, True, 8),
         Config(32, 256, 8, True), Config(128, 128, 1, True), Config(64, 256, 1, True)),
}
# W8 now: the H200's winners of 2026-11-30 (split 1 at 4096 / 6144 / 28672 wide, split 4 on down),
# smaller row blocks at split 1 (more CTAs, one kernel), and the splits as two-pass reductions.
CONFIGS_W8 = {
    1: (Config(32, 512, 1, False), Config(64, 256, 1, False), Config(16, 512, 1, False),
        Config(8, 512, 1, False, 2), Config(16, 1024, 1, False, 4, 2), Config(32, 512, 2, False, two_pass=True),
        Config(64, 256, 4, False, two_pass=True), Config(64, 256, 4, False), Config(16, 512, 4, False, two_pass=True),
        Config(32, 512, 1, False, stages=1)),
    16: CONFIGS_W8_V1[16] + (Config(64, 128, 8, True, two_pass=True), Config(128, 256, 2, True, 8, two_pass=True)),
}
GEMV_GS = 128  # the group size of the GEMV layout (one 16-word unit per group and row)

if triton is not None:
    # The kernels spell MAGIC (0x4B000000 = 1258291200), MAGIC_F and SIGN_FLIP as literals.
    @triton.jit
    def _gemv_k(w, j):
        """The input (within its group of 128) of code j of word w in the GEMV layout (pack_w4_gemv):
        32 (w % 4) + 8 (w // 4) + 2 (j % 4) + j // 4."""
        return 32 * (w % 4) + 8 * (w // 4) + 2 * (j % 4) + j // 4

    @triton.jit
    def _code(words, hi, J: tl.constexpr):
        """fp32 2^23 + q_J * 16^(J % 4) for the 4-bit code J of each word (hi = words >> 16)."""
        if J < 4:
            sel = words
        else:
            sel = hi
        return ((sel & (0xF << (4 * (J % 4)))) | 1258291200).to(tl.float32, bitcast=True)

    @triton.jit
    def _code_m(words, hi, magic, J: tl.constexpr):
        """_code with the magic 0x4B000000 passed in (a kernel argument, so it stays in a register and
        the mask is the instruction's one immediate: one LOP3 per weight, no MOV of a constant)."""
        if J < 4:
            sel = words
        else:
            sel = hi
        return ((sel & (0xF << (4 * (J % 4)))) | magic).to(tl.float32, bitcast=True)

    @triton.jit
    def _byte(u, hi, J: tl.constexpr):
        """fp32 2^23 + (q_J + 128) * 256^(J % 2) for byte J of each sign-flipped word (hi = u >> 16)."""
        if J < 2:
            sel = u
        else:
            sel = hi
        return ((sel & (0xFF << (8 * (J % 2)))) | 1258291200).to(tl.float32, bitcast=True)

    @triton.jit
    def _fma_code(part, xj, words, hi, z, J: tl.constexpr):
        """part += x_J[:, None] * (q_J - z) over a tile: the FMA path's step for code position J."""
        p = 1 << (4 * (J % 4))
        return part + (xj * (1.0 / p))[:, None] * (_code(words, hi, J) - (z * p + 8388608.0)[None, :])

    @triton.jit
    def _byte_m(u, hi, magic, J: tl.constexpr):
        """_byte with the magic passed in (as _code_m: one LOP3 per weight, no constant MOVs)."""
        if J < 2:
            sel = u
        else:
            sel = hi
        return ((sel & (0xFF << (8 * (J % 2)))) | magic).to(tl.float32, bitcast=True)

    @triton.jit
    def _fma_byte(part, xj, u, hi, magic, J: tl.constexpr):
        """part += (q_J * 256^(J%2)) * x_J / 256^(J%2) over a (BLOCK_N, BLOCK_K / 4) tile: W8's FMA step."""
        p = 1 << (8 * (J % 2))
        return part + (_byte_m(u, hi, magic, J) - (8388608.0 + 128.0 * p)) * (xj * (1.0 / p))[None, :]

    @triton.jit
    def _w4_skinny_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, M, N, K, stride_xm,
                          stride_wk, stride_wn, stride_sg, stride_sn,
                          GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr, STAGES: tl.constexpr,
                          TWO_PASS: tl.constexpr, SHUF: tl.constexpr):
        # SHUF: the GEMV layout (pack_w4_gemv; USE_DOT and BLOCK_K == GS == 128 only): code j of word w
        # of a group is input k0 + gemv_k(w, j) (gemv_k below). Else GPTQ's k0 + 8 * w + j.
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rw = tl.arange(0, BLOCK_K // 8)  # word rows of a tile
        n_tiles = K // BLOCK_K
        per = tl.cdiv(n_tiles, SPLIT_K)
        t_lo = pid_k * per
        t_hi = tl.minimum(t_lo + per, n_tiles)
        if USE_DOT:
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = rm < M
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for t in tl.range(t_lo, t_hi, num_stages=STAGES):
            k0 = t * BLOCK_K
            words = tl.load(qw_ptr + (k0 // 8 + rw)[:, None] * stride_wk + rn[None, :] * stride_wn,
                            mask=n_ok[None, :], other=0)
            hi = words >> 16  # (BLOCK_K / 8, BLOCK_N) int32
            g = k0 // GS
            s = tl.load(s_ptr + g * stride_sg + rn * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * stride_sg + rn * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
            if USE_DOT:
                for j in tl.static_range(8):
                    p = 1 << (4 * (j % 4))
                    w = (_code(words, hi, j) - (z * p + 8388608.0)[None, :]) * (s * (1.0 / p))[None, :]
                    if SHUF:
                        kj = k0 + _gemv_k(rw, j)
                    else:
                        kj = k0 + rw * 8 + j
                    xj = tl.load(x_ptr + rm[:, None] * stride_xm + kj[None, :],
                                 mask=m_ok[:, None], other=0.0)  # (BLOCK_M, BLOCK_K / 8): codes j of the words
                    acc += tl.dot(xj, w.to(xj.dtype))
            else:
                # x of the tile in one contiguous load, split into its 8 code positions in registers:
                # (BLOCK_K / 8, 8) -> (.., 2, 2, 2) with k % 8 = 4 * j2 + 2 * j1 + j0; each split peels j0, j1, j2.
                xt = tl.load(x_ptr + pid_m * stride_xm + k0 + rw[:, None] * 8 + tl.arange(0, 8)[None, :])
                e0, e1 = tl.split(tl.reshape(xt.to(tl.float32), (BLOCK_K // 8, 2, 2, 2)))  # j0 = 0, 1
                e00, e01 = tl.split(e0)  # j1
                e10, e11 = tl.split(e1)
                x0, x4 = tl.split(e00)  # j2
                x2, x6 = tl.split(e01)
                x1, x5 = tl.split(e10)
                x3, x7 = tl.split(e11)
                part = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
                part = _fma_code(part, x0, words, hi, z, 0)
                part = _fma_code(part, x1, words, hi, z, 1)
                part = _fma_code(part, x2, words, hi, z, 2)
                part = _fma_code(part, x3, words, hi, z, 3)
                part = _fma_code(part, x4, words, hi, z, 4)
                part = _fma_code(part, x5, words, hi, z, 5)
                part = _fma_code(part, x6, words, hi, z, 6)
                part = _fma_code(part, x7, words, hi, z, 7)
                acc += tl.sum(part, axis=0) * s
        if USE_DOT:
            offs = rm[:, None] * N + rn[None, :]
            mask = m_ok[:, None] & n_ok[None, :]
        else:
            offs = pid_m * N + rn
            mask = n_ok
        if SPLIT_K == 1:
            tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
        elif TWO_PASS:
            tl.store(ws_ptr + pid_k * M * N + offs, acc, mask=mask)
        else:
            tl.atomic_add(ws_ptr + offs, acc, mask=mask)

    @triton.jit
    def _w8_skinny_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, M, N, K, stride_xm, magic,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr, STAGES: tl.constexpr,
                          TWO_PASS: tl.constexpr):
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rc = tl.arange(0, BLOCK_K // 4)  # word columns of a tile
        K4 = K // 4
        n_tiles = K // BLOCK_K
        per = tl.cdiv(n_tiles, SPLIT_K)
        t_lo = pid_k * per
        t_hi = tl.minimum(t_lo + per, n_tiles)
        if USE_DOT:
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = rm < M
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            part = tl.zeros((BLOCK_N, BLOCK_K // 4), dtype=tl.float32)
        for t in tl.range(t_lo, t_hi, num_stages=STAGES):
            k0 = t * BLOCK_K
            if USE_DOT:  # (BLOCK_K / 4, BLOCK_N): words of column n run down the tile
                u = tl.load(w_ptr + rn[None, :] * K4 + (k0 // 4 + rc)[:, None], mask=n_ok[None, :], other=0)
            else:  # (BLOCK_N, BLOCK_K / 4): each row's BLOCK_K bytes are contiguous
                u = tl.load(w_ptr + rn[:, None] * K4 + (k0 // 4 + rc)[None, :], mask=n_ok[:, None], other=0)
            u = u ^ -2139062144
            hi = u >> 16
            if USE_DOT:
                for j in tl.static_range(4):
                    p = 1 << (8 * (j % 2))
                    q = _byte(u, hi, j) - (8388608.0 + 128.0 * p)  # q_j * p, exact
                    xj = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rc * 4 + j)[None, :],
                                 mask=m_ok[:, None], other=0.0)  # (BLOCK_M, BLOCK_K / 4)
                    acc += tl.dot(xj, (q * (1.0 / p)).to(xj.dtype))  # |q| <= 128: exact in bf16/fp16
            else:
                # x of the tile in one load, split in registers: (BLOCK_K / 4, 4) -> (.., 2, 2), k % 4 = 2 * j1 + j0
                xt = tl.load(x_ptr + pid_m * stride_xm + k0 + rc[:, None] * 4 + tl.arange(0, 4)[None, :])
                e0, e1 = tl.split(tl.reshape(xt.to(tl.float32), (BLOCK_K // 4, 2, 2)))  # j0 = 0, 1
                x0, x2 = tl.split(e0)  # j1
                x1, x3 = tl.split(e1)
                part = _fma_byte(part, x0, u, hi, magic, 0)
                part = _fma_byte(part, x1, u, hi, magic, 1)
                part = _fma_byte(part, x2, u, hi, magic, 2)
                part = _fma_byte(part, x3, u, hi, magic, 3)
        s = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if USE_DOT:
            acc = acc * s[None, :]
            offs = rm[:, None] * N + rn[None, :]
            mask = m_ok[:, None] & n_ok[None, :]
        else:
            acc = tl.sum(part, axis=1) * s
            offs = pid_m * N + rn
            mask = n_ok
        if SPLIT_K == 1:
            tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
        elif TWO_PASS:
            tl.store(ws_ptr + pid_k * M * N + offs, acc, mask=mask)
        else:
            tl.atomic_add(ws_ptr + offs, acc, mask=mask)


    @triton.jit
    def _w4_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, M, N, KW, stride_xm, magic, one,
                        BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr, STAGES: tl.constexpr,
                        FOLD: tl.constexpr):
        """y[m, n] for BLOCK_N rows n over a 1/SPLIT_K slice of K, on the GEMV layout (pack_w4_gemv):
        qw (N, K / 8) int32, a row's words in K order, each group of 128 codes one 16-word unit whose
        word w holds input k = 128 g + _gemv_k(w, j) at bits 4j; s, z (N, K / 128). The CTA streams its
        rows' contiguous words (BLOCK_W per row per tile, 16-byte loads), x_j (code j's inputs of the 16
        words) is gathered once per group, each thread keeps fp32 partials per (row, word) and applies the
        group scale to them once per word; the only cross-thread sum is the final one."""
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        GPT: tl.constexpr = BLOCK_W // 16  # groups per tile
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rn = tl.where(n_ok, rn, 0)  # rows past N re-read row 0 (loads stay unmasked, 16 bytes wide); not stored
        rg = tl.arange(0, GPT)
        ru = tl.arange(0, 16)
        G = KW // 16  # KW = K / 8 is an argument so that Triton sees 16-divisible row starts (16-byte loads)
        n_tiles = KW // BLOCK_W
        per = tl.cdiv(n_tiles, SPLIT_K)
        t_lo = pid_k * per
        t_hi = tl.minimum(t_lo + per, n_tiles)
        w_rows = rn.to(tl.int64)[:, None, None] * KW
        s_rows = s_ptr + rn[:, None] * G
        z_rows = z_ptr + rn[:, None] * G
        wpos = rg[:, None] * 16 + ru[None, :]  # (GPT, 16): word of the tile
        x_row = x_ptr + pid_m * stride_xm
        acc = tl.zeros((BLOCK_N, GPT, 16), dtype=tl.float32)
        for t in tl.range(t_lo, t_hi, num_stages=STAGES):
            w0 = t * BLOCK_W
            w_off = tl.max_contiguous(tl.multiple_of(w_rows + (w0 + wpos)[None, :, :], [1, 1, 16]), [1, 1, 16])
            words = tl.load(qw_ptr + w_off)  # (BLOCK_N, GPT, 16)
            hi = (words.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)  # logical shift
            g = t * GPT + rg
            s = tl.load(s_rows + g[None, :]).to(tl.float32)  # (BLOCK_N, GPT)
            z = tl.load(z_rows + g[None, :]).to(tl.float32)
            xb = x_row + w0 * 8 + rg[:, None] * 128 + _gemv_k(ru, 0)[None, :]  # (GPT, 16): input of code 0 of each word
            part = tl.zeros((BLOCK_N, GPT, 16), dtype=tl.float32)
            if FOLD:
                # Offset folding: code j moved to mantissa bits b..b+3 (b = 15 or 19) of 1.0 reads as
                # 1 + q 2^(b - 23); times x_j 2^(23 - b) that is x_j 2^(23 - b) + x_j q. The offsets (x only,
                # shared by the rows) and the zero point come off once per word, so a weight costs one
                # LOP3 and one FFMA (4 shifts and 3 ops per word). The cancellation is within a word's 8
                # codes, offsets <= 2^8 |x|: ~1e-5 relative in fp32 (b = 11 would cost 16x that).
                u = words.to(tl.uint32, bitcast=True)
                c0 = (u << 15).to(tl.int32, bitcast=True)  # codes 0, 1 at bits 15, 19
                c1 = (u << 7).to(tl.int32, bitcast=True)  # codes 2, 3
                c2 = (u >> 1).to(tl.int32, bitcast=True)  # codes 4, 5
                c3 = (u >> 9).to(tl.int32, bitcast=True)  # codes 6, 7
                off = tl.zeros((GPT, 16), dtype=tl.float32)
                xs = tl.zeros((GPT, 16), dtype=tl.float32)
                for j in tl.static_range(8):
                    b = 15 + 4 * (j % 2)
                    if j < 2:
                        c = c0
                    elif j < 4:
                        c = c1
                    elif j < 6:
                        c = c2
                    else:
                        c = c3
                    xj = tl.load(xb + (2 * (j % 4) + j // 4)).to(tl.float32)
                    xp = xj * (1 << (23 - b))
                    part += xp[None, :, :] * ((c & (0xF << b)) | one).to(tl.float32, bitcast=True)
                    off += xp
                    xs += xj
                acc += (part - (off[None, :, :] + z[:, :, None] * xs[None, :, :])) * s[:, :, None]
            else:
                for j in tl.static_range(8):
                    p = 1 << (4 * (j % 4))
                    xj = tl.load(xb + (2 * (j % 4) + j // 4)).to(tl.float32) * (1.0 / p)
                    part += xj[None, :, :] * (_code_m(words, hi, magic, j) - (z * p + 8388608.0)[:, :, None])
                acc += part * s[:, :, None]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        offs = pid_m * N + rn
        if SPLIT_K == 1:
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=n_ok)
        else:
            tl.store(ws_ptr + pid_k * M * N + offs, y, mask=n_ok)

    @triton.jit
    def _sum_splits_kernel(ws_ptr, y_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        """y = sum over the SPLIT_K partial planes of ws (SPLIT_K, M, N) fp32, cast to y's dtype."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in tl.static_range(SPLIT_K):
            acc += tl.load(ws_ptr + i * MN + offs, mask=mask, other=0.0)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def m_bucket(M: int) -> int:
    """The autotune bucket of a batch: 1, or 16 for 2..16 rows."""
    assert 1 <= M <= MAX_M, f"skinny kernels take 1..{MAX_M} rows, got {M}"
    return 1 if M == 1 else 16


def w4_configs(M: int, K: int, group_size: int, gemv_layout: bool = False) -> list[Config]:
    """The W4 autotune set for this bucket and layout, less configs whose BLOCK_K does not divide the
    group size (GPTQ layout) or K (GEMV layout: whole tiles of 16-word units)."""
    if gemv_layout:
        if group_size != GEMV_GS:
            return []
        return [c for c in CONFIGS_W4_GEMV[m_bucket(M)] if K % c.block_k == 0]
    return [c for c in CONFIGS_W4[m_bucket(M)] if group_size % c.block_k == 0 and K % c.block_k == 0]


def w8_configs(M: int, K: int, sets: Optional[dict] = None) -> list[Config]:
    """The W8 autotune set for this bucket (sets: CONFIGS_W8, or CONFIGS_W8_V1), less configs whose
    BLOCK_K does not divide K."""
    return [c for c in (sets or CONFIGS_W8)[m_bucket(M)] if K % c.block_k == 0]


def _launch(kernel, cfg: Config, x2, y_dtype, N: int, args: tuple, extra: tuple, tail: tuple = ()) -> torch.Tensor:
    """Run one config: direct store (split 1), per-split fp32 partials summed by _sum_splits_kernel
    (two_pass, and the GEMV kernel's splits), or fp32 atomic partials then a cast."""
    M, K = x2.shape
    block_m = 16 if cfg.use_dot else 1
    grid = (triton.cdiv(N, cfg.block_n), cfg.split_k, triton.cdiv(M, block_m))
    two_pass = cfg.split_k > 1 and (cfg.two_pass or cfg.gemv)
    if cfg.split_k == 1:
        y = torch.empty(M, N, device=x2.device, dtype=y_dtype)
        ws = y
    elif two_pass:
        ws = torch.empty(cfg.split_k, M, N, device=x2.device, dtype=torch.float32)
        y = torch.empty(M, N, device=x2.device, dtype=y_dtype)
    else:
        ws = torch.zeros(M, N, device=x2.device, dtype=torch.float32)
        y = ws
    if cfg.gemv:
        kernel[grid](x2, *args, y, ws, M, N, K // 8, x2.stride(0), MAGIC, ONE_BITS, cfg.block_n, cfg.block_k // 8,
                     cfg.split_k, cfg.stages, cfg.fold, num_warps=cfg.num_warps)
    else:
        kernel[grid](x2, *args, y, ws, M, N, K, x2.stride(0), *extra, block_m, cfg.block_n, cfg.block_k,
                     cfg.split_k, cfg.use_dot, cfg.stages, cfg.two_pass, *tail, num_warps=cfg.num_warps)
    if two_pass:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(M * N, block),)](ws, y, M * N, cfg.split_k, block, num_warps=4)
        return y
    return y if cfg.split_k == 1 else y.to(y_dtype)


def w4a16_skinny(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M <= 16, K) contiguous -> (M, N) in x2's dtype, GPTQ layout (module docstring); config None:
    tuned_config's."""
    M, K = x2.shape
    N = qweight.shape[1]
    cands = w4_configs(M, K, group_size)
    assert cands, f"no W4 skinny config for K={K}, group_size={group_size} (BLOCK_K must divide both)"
    strides = (qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1))

    def run(cfg, qw=qweight, s=scales, z=zeros):
        return _launch(_w4_skinny_kernel, cfg, x2, x2.dtype, N, (qw, s, z), strides + (group_size,), (False,))

    def ref(qw=qweight, s=scales, z=zeros):
        return x2.float() @ dequantize_w4(qw, s, z, group_size).T

    cfg = config or tuned_config(("w4", N, K, m_bucket(M), group_size, x2.dtype, x2.device), cands, run,
                                 (qweight, scales, zeros), ref)
    return run(cfg)


def w4a16_gemv(x2: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M <= 16, K) contiguous; the GEMV layout of pack_w4_gemv: qw int32 (N, K / 8), scales and
    zeros (N, K / 128) -> (M, N) in x2's dtype. Candidates: the row-streaming kernel (M = 1), the
    tensor-core skinny tiles on the same words (SHUF), and kernels.gemv4's (the CUDA mma GEMV at M <= 8,
    the tc tiles at M >= 2), tuned per (N, K, gemv4.gemv_bucket(M)). config None: tuned_config's."""
    from kernels import gemv4

    M, K = x2.shape
    N = qw.shape[0]
    assert qw.shape == (N, K // 8) and qw.is_contiguous() and scales.shape == (N, K // GEMV_GS), \
        (tuple(qw.shape), tuple(scales.shape), K)
    cands = w4_configs(M, K, GEMV_GS, gemv_layout=True) + gemv4.extra_gemv_configs(x2, N, scales, zeros)
    assert cands, f"no W4 GEMV config for K={K}"

    def run(cfg, qw=qw, s=scales, z=zeros):
        if cfg.mma or cfg.block_m:  # kernels/gemv4.py's: the CUDA mma GEMV, the tc tiles
            return gemv4.run_gemv_config(cfg, x2, qw, s, z)
        if cfg.gemv:
            return _launch(_w4_gemv_kernel, cfg, x2, x2.dtype, N, (qw, s, z), ())
        # the skinny tiles read (K / 8, N) words and (G, N) scales: the transposed views, by strides
        strides = (1, qw.stride(0), 1, s.stride(0))
        return _launch(_w4_skinny_kernel, cfg, x2, x2.dtype, N, (qw, s, z), strides + (GEMV_GS,), (True,))

    def ref(qw=qw, s=scales, z=zeros):
        return x2.float() @ dequantize_w4_gemv(qw, s, z).T

    cfg = config or tuned_config(("w4g", N, K, gemv4.gemv_bucket(M), GEMV_GS, x2.dtype, x2.device), cands, run,
                                 (qw, scales, zeros), ref)
    return run(cfg)


def w8a16_skinny(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                 config: Optional[Config] = None, sets: Optional[dict] = None) -> torch.Tensor:
    """x2 (M <= 16, K) contiguous, w int8 (N, K) contiguous, K % 4 == 0 -> (M, N) in x2's dtype
    (sets: the candidate sets, CONFIGS_W8 by default; CONFIGS_W8_V1 for the bench's before row)."""
    M, K = x2.shape
    N = w.shape[0]
    cands = w8_configs(M, K, sets)
    assert cands and K % 4 == 0, f"no W8 skinny config for K={K}"
    w32 = w.view(torch.int32)  # (N, K / 4): four codes per word, little-endian (code k at byte k % 4)

    def run(cfg, w32=w32, s=scale):
        return _launch(_w8_skinny_kernel, cfg, x2, x2.dtype, N, (w32, s), (MAGIC,))

    def ref(w32=w32, s=scale):
        return x2.float() @ (w32.view(torch.int8).float() * s.float()[:, None]).T

    tag = "w8" if sets is None or sets is CONFIGS_W8 else "w8v1"
    cfg = config or tuned_config((tag, N, K, m_bucket(M), x2.dtype, x2.device), cands, run, (w32, scale), ref)
    return run(cfg)


def gemv_k_index() -> torch.Tensor:
    """(16, 8) int64: the input within its group of code j (bits 4j) of word w of the GEMV layout,
    32 (w % 4) + 8 (w // 4) + 2 (j % 4) + j // 4 (pack_w4_gemv's docstring says why)."""
    w = torch.arange(16)[:, None]
    j = torch.arange(8)[None, :]
    return 32 * (w % 4) + 8 * (w // 4) + 2 * (j % 4) + j // 4


def pack_w4_gemv(q: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15 (K % 128 == 0) -> int32 (N, K / 8), the GEMV layout: row n's words in K
    order, each 128-code group one 16-word unit; word w = 4 t + p holds the 8 inputs 32 p + 8 t + o of
    the group (o = 0..7), input o at bits 4 (o // 2 + 4 (o % 2)) (gemv_k_index). Why: a 16-byte load is
    a tensor-core lane's 4 words of a row (kernels/csrc/gemv4.cu: lane t's mma steps 2p, 2p + 1 take
    inputs 32 p + 8 t + 0..7, one 16-byte load of x too), and inputs 2i, 2i + 1 sit at bits 4i, 4i + 16,
    one LOP3 from a packed pair of 16-bit floats. The Triton kernels read it by gathering x."""
    N, K = q.shape
    assert K % GEMV_GS == 0, f"the GEMV layout needs K % {GEMV_GS} == 0, got K={K}"
    idx = gemv_k_index().to(q.device)  # (16, 8)
    v = q.to(torch.int64).reshape(N, K // GEMV_GS, GEMV_GS)[:, :, idx]  # (n, group, w, j)
    shifts = (torch.arange(8, device=q.device, dtype=torch.int64) * 4)[None, None, None, :]
    words = (v << shifts).sum(3).reshape(N, K // 8)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def unpack_w4_gemv(qw: torch.Tensor) -> torch.Tensor:
    """pack_w4_gemv's inverse: int32 (N, K / 8) -> codes (N, K) int64."""
    N, KW = qw.shape
    w = qw.to(torch.int64).reshape(N, KW // 16, 16, 1)
    shifts = (torch.arange(8, device=qw.device, dtype=torch.int64) * 4)[None, None, None, :]
    codes = ((w >> shifts) & 0xF).reshape(N, KW // 16, GEMV_GS)  # (n, group, 8 w + j)
    out = torch.empty_like(codes)
    out[:, :, gemv_k_index().to(qw.device).reshape(-1)] = codes
    return out.reshape(N, KW * 8)


def dequantize_w4_gemv(qw: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """fp32 (N, K) weights of the GEMV layout (scales, zeros (N, K / 128))."""
    q = unpack_w4_gemv(qw).float()
    g = torch.arange(q.shape[1], device=q.device) // GEMV_GS
    return (q - zeros.float()[:, g]) * scales.float()[:, g]


def dequantize_w4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """fp32 (N, K) weights of the GPTQ layout (qweight (K / 8, N), scales, zeros (K / gs, N))."""
    KW, N = qweight.shape
    shifts = (torch.arange(8, device=qweight.device, dtype=torch.int64) * 4)
    q = ((qweight.to(torch.int64)[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(KW * 8, N).float()
    g = torch.arange(KW * 8, device=q.device) // group_size
    return ((q - zeros.float()[g]) * scales.float()[g]).T


_TUNED: dict[tuple, Config] = {}  # tuning key -> the fastest config measured on this process's GPU
_TIMES: dict[tuple, float] = {}  # (key, config) -> microseconds per call measured while tuning
_REJECTED: list[tuple] = []  # (key, config, error) of candidates that failed to compile or run
L2_SPAN = 256 << 20  # bytes of rotating weight copies a tuning graph streams (> an H200's 50 MB L2)
MAX_COPIES = 64  # at most this many copies (calls per tuning graph)


AGREE_TOL = 1e-2  # of max|reference|: a tuning candidate's output against the dequantized fp32 reference


def agrees(y: torch.Tensor, ref: torch.Tensor, tol: float = AGREE_TOL) -> tuple[bool, float]:
    """(ok, err): err = max|y - ref| / max|ref|. A correct bf16 kernel differs by its output rounding
    (2^-9 of an output, less of the maximum) and the fp32 summation order; a wrong group, byte order
    or row moves outputs by O(max|ref|) (kernels/tests/test_quant_gemv.py plants both)."""
    err = float((y.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
    return (err <= tol), err


def tuned_config(key: tuple, cands: list[Config], run: Callable, weights: tuple,
                 ref: Optional[Callable] = None) -> Config:
    """The fastest of cands for key, or cands[0] where timing is impossible (interpreter, CPU, graph
    capture). Each candidate is first checked against ref() (the dequantized fp32 reference of this
    call: a candidate that is wrong on this GPU is rejected, never chosen), then timed by
    triton.testing.do_bench_cudagraph over a graph of calls on rotating weight copies larger than L2
    (the weights come from HBM, as in a decode step)."""
    if key in _TUNED:
        return _TUNED[key]
    x_dev = weights[0].device
    if len(cands) == 1 or x_dev.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return cands[0]
    from triton.testing import do_bench_cudagraph

    nbytes = sum(t.numel() * t.element_size() for t in weights)
    n_copies = min(MAX_COPIES, max(1, L2_SPAN // nbytes))  # tiny test weights stay L2-resident: nothing to tune there
    copies = [weights] + [tuple(t.clone() for t in weights) for _ in range(n_copies - 1)]
    want = ref() if ref is not None else None
    best, best_us = cands[0], float("inf")
    for cfg in cands:
        try:
            got = run(cfg)  # compiles
            if want is not None:
                ok, err = agrees(got, want)
                if not ok:
                    _REJECTED.append((key, str(cfg), f"WRONG: {err:.3g} of max|reference| (band {AGREE_TOL})"))
                    continue
            ms = do_bench_cudagraph(lambda: [run(cfg, *ws) for ws in copies], rep=10)
        except Exception as e:  # a config this GPU cannot compile (shared memory, registers): not a candidate
            _REJECTED.append((key, str(cfg), f"{type(e).__name__}: {str(e)[:200]}"))
            continue
        us = ms * 1e3 / len(copies)
        _TIMES[(key, str(cfg))] = us
        if us < best_us:
            best, best_us = cfg, us
    del copies, want
    _TUNED[key] = best
    return best


def tuned_table() -> list[dict]:
    """What tuned_config measured so far: one row per (key, candidate), the chosen one marked (for a bench)."""
    rows = []
    for (key, cfg), us in _TIMES.items():
        rows.append({"kernel": key[0], "N": key[1], "K": key[2], "m_bucket": key[3], "config": cfg, "us": us,
                     "chosen": str(_TUNED.get(key)) == cfg})
    rows += [{"kernel": k[0], "N": k[1], "K": k[2], "m_bucket": k[3], "config": c, "error": e} for k, c, e in _REJECTED]
    return rows
