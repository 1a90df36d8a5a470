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

Configs are an explicit autotune set per M bucket (CONFIGS_W4, CONFIGS_W8); `tuned_config` times
each candidate once per (kernel, N, K, M bucket, group size, dtype) with a CUDA graph of calls over
rotating weight copies larger than L2 (so the weights come from HBM, as in a decode step) and keeps
the fastest. Under graph capture, the interpreter or a CPU, the bucket's first config is used.
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


@dataclass(frozen=True)
class Config:
    """One launch shape: tile sizes, split-K factor, inner product (dot or FMA) and warps."""

    block_n: int
    block_k: int
    split_k: int
    use_dot: bool
    num_warps: int = 4
    stages: int = 3  # software-pipelining depth of the K loop (cp.async prefetch of the next tiles); 1 = none

    def __str__(self) -> str:
        return (f"{'dot' if self.use_dot else 'fma'}_n{self.block_n}_k{self.block_k}_s{self.split_k}_w{self.num_warps}"
                f"_p{self.stages}")


# The autotune sets, per M bucket (1, or 2..16). The first entry is the default where nothing is
# timed (interpreter, CPU, graph capture before tuning). BLOCK_K: W4 needs it to divide the group
# size (one scale row per tile) and >= 128 for USE_DOT (each per-code dot has k = BLOCK_K / 8 >= 16).
CONFIGS_W4 = {
    1: (Config(64, 128, 8, False), Config(128, 128, 4, False), Config(128, 128, 8, False),
        Config(256, 128, 4, False, 8), Config(32, 128, 16, False), Config(64, 128, 1, False),
        Config(128, 128, 1, False), Config(64, 128, 8, True), Config(128, 128, 4, True),
        Config(64, 128, 8, False, stages=1), Config(128, 128, 4, False, stages=1)),
    16: (Config(64, 128, 4, True), Config(64, 128, 8, True), Config(128, 128, 4, True),
         Config(128, 128, 1, True), Config(32, 128, 8, True), Config(256, 128, 2, True, 8),
         Config(64, 128, 1, True)),
}
CONFIGS_W8 = {
    1: (Config(32, 512, 4, False), Config(64, 256, 4, False), Config(16, 512, 8, False),
        Config(32, 256, 8, False), Config(64, 512, 2, False, 8), Config(32, 512, 1, False),
        Config(64, 256, 1, False), Config(64, 256, 4, True), Config(32, 512, 4, False, stages=1)),
    16: (Config(64, 256, 4, True), Config(64, 128, 8, True), Config(128, 256, 2, True, 8),
         Config(32, 256, 8, True), Config(128, 128, 1, True), Config(64, 256, 1, True)),
}

if triton is not None:
    # The kernels spell MAGIC (0x4B000000 = 1258291200), MAGIC_F and SIGN_FLIP as literals.
    @triton.jit
    def _code(words, hi, J: tl.constexpr):
        """fp32 2^23 + q_J * 16^(J % 4) for the 4-bit code J of each word (hi = words >> 16)."""
        if J < 4:
            sel = words
        else:
            sel = hi
        return ((sel & (0xF << (4 * (J % 4)))) | 1258291200).to(tl.float32, bitcast=True)

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
    def _fma_byte(part, xj, u, hi, J: tl.constexpr):
        """part += (q_J * 256^(J%2)) * x_J / 256^(J%2) over a (BLOCK_N, BLOCK_K / 4) tile: W8's FMA step."""
        p = 1 << (8 * (J % 2))
        return part + (_byte(u, hi, J) - (8388608.0 + 128.0 * p)) * (xj * (1.0 / p))[None, :]

    @triton.jit
    def _w4_skinny_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, M, N, K, stride_xm,
                          GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr, STAGES: tl.constexpr):
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
            words = tl.load(qw_ptr + (k0 // 8 + rw)[:, None] * N + rn[None, :], mask=n_ok[None, :], other=0)
            hi = words >> 16  # (BLOCK_K / 8, BLOCK_N) int32
            g = k0 // GS
            s = tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)
            if USE_DOT:
                for j in tl.static_range(8):
                    p = 1 << (4 * (j % 4))
                    w = (_code(words, hi, j) - (z * p + 8388608.0)[None, :]) * (s * (1.0 / p))[None, :]
                    xj = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rw * 8 + j)[None, :],
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
        else:
            tl.atomic_add(ws_ptr + offs, acc, mask=mask)

    @triton.jit
    def _w8_skinny_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, M, N, K, stride_xm,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          SPLIT_K: tl.constexpr, USE_DOT: tl.constexpr, STAGES: tl.constexpr):
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
                part = _fma_byte(part, x0, u, hi, 0)
                part = _fma_byte(part, x1, u, hi, 1)
                part = _fma_byte(part, x2, u, hi, 2)
                part = _fma_byte(part, x3, u, hi, 3)
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
        else:
            tl.atomic_add(ws_ptr + offs, acc, mask=mask)


def m_bucket(M: int) -> int:
    """The autotune bucket of a batch: 1, or 16 for 2..16 rows."""
    assert 1 <= M <= MAX_M, f"skinny kernels take 1..{MAX_M} rows, got {M}"
    return 1 if M == 1 else 16


def w4_configs(M: int, K: int, group_size: int) -> list[Config]:
    """The W4 autotune set for this bucket, less configs whose BLOCK_K does not divide the group size."""
    return [c for c in CONFIGS_W4[m_bucket(M)] if group_size % c.block_k == 0 and K % c.block_k == 0]


def w8_configs(M: int, K: int) -> list[Config]:
    """The W8 autotune set for this bucket, less configs whose BLOCK_K does not divide K."""
    return [c for c in CONFIGS_W8[m_bucket(M)] if K % c.block_k == 0]


def _launch(kernel, cfg: Config, x2, y_dtype, N: int, args: tuple, extra: tuple) -> torch.Tensor:
    """Run one config: direct store (split 1) or fp32 atomic partials then a cast (split > 1)."""
    M = x2.shape[0]
    block_m = 16 if cfg.use_dot else 1
    grid = (triton.cdiv(N, cfg.block_n), cfg.split_k, triton.cdiv(M, block_m))
    if cfg.split_k == 1:
        y = torch.empty(M, N, device=x2.device, dtype=y_dtype)
        ws = y
    else:
        ws = torch.zeros(M, N, device=x2.device, dtype=torch.float32)
        y = ws
    kernel[grid](x2, *args, y, ws, M, N, x2.shape[1], x2.stride(0), *extra, block_m, cfg.block_n, cfg.block_k,
                 cfg.split_k, cfg.use_dot, cfg.stages, num_warps=cfg.num_warps)
    return y if cfg.split_k == 1 else y.to(y_dtype)


def w4a16_skinny(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M <= 16, K) contiguous -> (M, N) in x2's dtype (module docstring); config None: tuned_config's."""
    M, K = x2.shape
    N = qweight.shape[1]
    cands = w4_configs(M, K, group_size)
    assert cands, f"no W4 skinny config for K={K}, group_size={group_size} (BLOCK_K must divide both)"

    def run(cfg, qw=qweight, s=scales, z=zeros):
        return _launch(_w4_skinny_kernel, cfg, x2, x2.dtype, N, (qw, s, z), (group_size,))

    cfg = config or tuned_config(("w4", N, K, m_bucket(M), group_size, x2.dtype, x2.device), cands, run,
                                 (qweight, scales, zeros))
    return run(cfg)


def w8a16_skinny(x2: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                 config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M <= 16, K) contiguous, w int8 (N, K) contiguous, K % 4 == 0 -> (M, N) in x2's dtype."""
    M, K = x2.shape
    N = w.shape[0]
    cands = w8_configs(M, K)
    assert cands and K % 4 == 0, f"no W8 skinny config for K={K}"
    w32 = w.view(torch.int32)  # (N, K / 4): four codes per word, little-endian (code k at byte k % 4)

    def run(cfg, w32=w32, s=scale):
        return _launch(_w8_skinny_kernel, cfg, x2, x2.dtype, N, (w32, s), ())

    cfg = config or tuned_config(("w8", N, K, m_bucket(M), x2.dtype, x2.device), cands, run, (w32, scale))
    return run(cfg)


_TUNED: dict[tuple, Config] = {}  # tuning key -> the fastest config measured on this process's GPU
_TIMES: dict[tuple, float] = {}  # (key, config) -> microseconds per call measured while tuning
_REJECTED: list[tuple] = []  # (key, config, error) of candidates that failed to compile or run
L2_SPAN = 256 << 20  # bytes of rotating weight copies a tuning graph streams (> an H200's 50 MB L2)
MAX_COPIES = 64  # at most this many copies (calls per tuning graph)


def tuned_config(key: tuple, cands: list[Config], run: Callable, weights: tuple) -> Config:
    """The fastest of cands for key (timed once, module docstring), or cands[0] where timing is impossible."""
    if key in _TUNED:
        return _TUNED[key]
    x_dev = weights[0].device
    if len(cands) == 1 or x_dev.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return cands[0]
    nbytes = sum(t.numel() * t.element_size() for t in weights)
    n_copies = min(MAX_COPIES, max(1, L2_SPAN // nbytes))  # tiny test weights stay L2-resident: nothing to tune there
    copies = [weights] + [tuple(t.clone() for t in weights) for _ in range(n_copies - 1)]
    best, best_us = cands[0], float("inf")
    stream = torch.cuda.Stream(x_dev)
    stream.wait_stream(torch.cuda.current_stream(x_dev))
    with torch.cuda.stream(stream):
        for cfg in cands:
            try:
                for ws in copies[:2]:  # compile and warm outside the graph
                    run(cfg, *ws)
            except Exception as e:  # a config this GPU cannot compile (shared memory, registers): not a candidate
                _REJECTED.append((key, str(cfg), f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for ws in copies:
                    run(cfg, *ws)
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(3):
                graph.replay()
            end.record(stream)
            end.synchronize()
            us = start.elapsed_time(end) * 1e3 / (3 * len(copies))
            _TIMES[(key, str(cfg))] = us
            if us < best_us:
                best, best_us = cfg, us
            del graph
    torch.cuda.current_stream(x_dev).wait_stream(stream)
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
