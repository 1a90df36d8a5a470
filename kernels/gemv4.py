"""W4A16 g128 on the GEMV layout (kernels/quant_gemv.py's pack_w4_gemv) on the tensor cores.

Two kernels, both candidates of quant_gemv's tuner (`tuned_config`: each checked against the call's
fp32 dequantized reference, then timed; the fastest kept per shape):

  mma (1..8 tokens): kernels/csrc/gemv4.cu through kernels._C. A CTA owns R tiles of 16 rows, its
      WARPS warps split K by groups; mma.sync m16n8k16 with the weights as A (16 rows) and the tokens
      as B's 8 columns, dequantization by LOP3 to packed 16-bit floats (MAGIC + q, exact), the offset
      and zero point removed once per group (X_g from one more mma with A = ones), the group scale
      applied to the fp32 group sum. MMA_CONFIGS lists the compiled (R, WARPS, U) launch shapes.
  tc (any M, the decode batches past 16 and prefill): _w4_gemv_tc_kernel, Triton tl.dot tiles that
      read each row's words of a group as one contiguous 64-byte run (the GEMV layout's rows are
      contiguous along K; reading them as the (K / 8, N) view strided them, the 2026-11-30 batch-64
      regression), expand them in registers in the layout's (word, code) order, and gather x in that
      same order (a dot is a sum: any order of k that A and B share).

Roofline at one token, Llama-3-8B's four linears of a layer: 115.9 MB of words and fp16 scales / zeros
(the bench's MB_read), 27.4 us at the H200's measured 4,229 GB/s copy; the ALU work is ~1 instruction
per weight (3 shifts and 4 LOP3 per 8 weights, one mma per 256), ~3.5 us of issue per layer.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from kernels import quant_gemv
from kernels.quant_gemv import GEMV_GS, Config

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

# (R tiles of 16 rows per CTA, WARPS warps over K, U groups per pipeline step); the index is the config
# id of kernels/csrc/gemv4.cu's LAB_W4_MMA_CONFIGS (keep the two in sync). Registers (sm_90, nvcc 13.0):
# 98-174 without spills; R 2 x U 4 spilled and is not in the set.
MMA_CONFIGS = ((1, 4, 4), (1, 4, 2), (1, 8, 2), (1, 8, 4), (2, 4, 2), (1, 16, 1), (1, 2, 4), (2, 8, 2))
MMA_MAX_M = 8  # B's 8 columns
# (x, scales) dtype pairs compiled
MMA_DTYPES = ((torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float16), (torch.float16, torch.float16))


def mma_config(i: int) -> Config:
    """Config of MMA_CONFIGS[i]: block_n = 16 R rows per CTA, split_k = WARPS, block_k = 128 U."""
    R, W, U = MMA_CONFIGS[i]
    return Config(16 * R, GEMV_GS * U, W, True, W, 1, mma=True)


def mma_id(cfg: Config) -> int:
    """The CUDA config id of an mma Config."""
    return MMA_CONFIGS.index((cfg.block_n // 16, cfg.split_k, cfg.block_k // GEMV_GS))


_EXT = None


def _ext_module():
    """kernels._C, or None (no GPU, no nvcc/pybind11: the mma candidates are then not offered)."""
    global _EXT
    if _EXT is None:
        try:
            from kernels import _ext

            _EXT = _ext.load()
            if not hasattr(_EXT, "w4a16_gemv_mma"):  # an extension built before gemv4.cu: build this tree's
                import importlib.util

                from kernels import _build

                spec = importlib.util.spec_from_file_location("kernels._C", _build.build())
                _EXT = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(_EXT)
        except Exception:  # noqa: BLE001 - no GPU toolchain here: the mma candidates are not offered
            _EXT = False
        if _EXT is not False and not hasattr(_EXT, "w4a16_gemv_mma"):
            _EXT = False
    return _EXT or None


def mma_configs(x2: torch.Tensor, N: int, scales: torch.Tensor, zeros: torch.Tensor) -> list[Config]:
    """The mma candidates for this call: none off CUDA, past 8 tokens, for other dtypes, or without the
    extension; else MMA_CONFIGS less those whose tiles do not divide N or whose U does not divide K / 128."""
    M, K = x2.shape
    if not (x2.is_cuda and 1 <= M <= MMA_MAX_M and (x2.dtype, scales.dtype) in MMA_DTYPES
            and zeros.dtype == scales.dtype and K % GEMV_GS == 0 and scales.is_contiguous() and zeros.is_contiguous()):
        return []
    if os.environ.get("LAB_W4_MMA") == "0" or _ext_module() is None:  # LAB_W4_MMA=0: leave them out
        return []
    G = K // GEMV_GS
    return [mma_config(i) for i, (R, _, U) in enumerate(MMA_CONFIGS) if N % (16 * R) == 0 and G % U == 0]


def launch_mma(cfg: Config, x2: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor) -> torch.Tensor:
    """y (M, N) in x2's dtype by the CUDA mma kernel with cfg (an mma_config)."""
    from kernels import _ext

    M, K = x2.shape
    N = qw.shape[0]
    if x2.data_ptr() % 16:  # a view at an odd offset: the kernel's 16-byte x loads need an aligned copy
        x2 = x2.clone()
    align = 2 * cfg.block_k // GEMV_GS  # U scales / zeros of a row load as one aligned vector
    if qw.data_ptr() % 16 or scales.data_ptr() % align or zeros.data_ptr() % align:
        qw, scales, zeros = qw.clone(), scales.clone(), zeros.clone()  # (weights the tuner never saw like this)
    y = torch.empty(M, N, device=x2.device, dtype=x2.dtype)
    ext = _ext_module()
    _ext.launch(x2, lambda stream: ext.w4a16_gemv_mma(
        y.data_ptr(), x2.data_ptr(), qw.data_ptr(), scales.data_ptr(), zeros.data_ptr(), M, N, K,
        _ext.dtype_code(x2.dtype), _ext.dtype_code(scales.dtype), mma_id(cfg), stream))
    return y


def gemv_bucket(M: int) -> int:
    """The GEMV-layout tuner's batch bucket: 1, 8 (2..8: the mma kernel's), 16 (9..16)."""
    assert 1 <= M <= quant_gemv.MAX_M, M
    return 1 if M == 1 else 8 if M <= MMA_MAX_M else 16


# The tc tiles: block_m tokens x block_n rows per CTA, one group (128 inputs) per K step; fold = the
# MAGIC dequantization (codes OR-ed into 16-bit floats, offsets off once per group; bf16 / fp16 x only).
CONFIGS_TC = (Config(64, 128, 1, True, 4, 3, block_m=64), Config(128, 128, 1, True, 4, 3, block_m=64),
              Config(128, 128, 1, True, 8, 3, block_m=64), Config(128, 128, 1, True, 4, 3, block_m=32),
              Config(256, 128, 1, True, 8, 3, block_m=64), Config(128, 128, 1, True, 8, 3, block_m=128),
              Config(64, 128, 1, True, 4, 4, block_m=32), Config(64, 128, 1, True, 4, 1, block_m=64),
              Config(64, 128, 1, True, 4, 3, block_m=64, fold=True),
              Config(128, 128, 1, True, 4, 3, block_m=64, fold=True),
              Config(128, 128, 1, True, 8, 3, block_m=64, fold=True),
              Config(256, 128, 1, True, 8, 3, block_m=64, fold=True),
              Config(128, 128, 1, True, 8, 3, block_m=128, fold=True))
# as candidates of the skinny buckets (2..16 tokens): 16-token tiles
CONFIGS_TC_SKINNY = (Config(64, 128, 1, True, 4, 3, block_m=16), Config(128, 128, 1, True, 4, 3, block_m=16),
                     Config(32, 128, 1, True, 4, 3, block_m=16), Config(128, 128, 1, True, 8, 4, block_m=16),
                     Config(64, 128, 1, True, 4, 3, block_m=16, fold=True),
                     Config(128, 128, 1, True, 4, 3, block_m=16, fold=True))
TC_TUNE_MAX_M = 128  # batches up to this are tuned (buckets 32, 64, 128); prefill uses CONFIGS_TC[0]


if triton is not None:
    @triton.jit
    def _w4_gemv_tc_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, KW, stride_xm,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
                           MAGIC: tl.constexpr):
        """y (M, N) = x (M, K) @ W^T, W from the GEMV layout: per group, each row's 16 words (64
        contiguous bytes) expand to a (BLOCK_N, 128) tile in (word, input within the word) order, x is
        loaded in that order (pack_w4_gemv's map), and one tl.dot of k = 128 takes both."""
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = rm < M
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rnc = tl.where(n_ok, rn, 0)  # rows past N re-read row 0, never stored
        ru = tl.arange(0, 16)
        ro = tl.arange(0, 8)
        G = KW // 16
        # tile column 8 w + o = input o of word w's 8 (32 (w % 4) + 8 (w // 4) + o): runs of 8 contiguous
        # inputs, so x loads 16 bytes at a time; input o sits at bits 4 (o // 2 + 4 (o % 2)) of the word
        c = tl.arange(0, 128)
        kofs = tl.max_contiguous(tl.multiple_of(32 * ((c // 8) % 4) + 8 * (c // 32) + c % 8, 8), 8)
        shifts = (4 * (ro // 2 + 4 * (ro % 2)))[None, None, :]
        w_rows = rnc.to(tl.int64)[:, None] * KW
        x_rows = x_ptr + rm[:, None] * stride_xm
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xdt = x_ptr.dtype.element_ty
        for g in tl.range(0, G, num_stages=STAGES):
            words = tl.load(qw_ptr + w_rows + g * 16 + ru[None, :])  # (BLOCK_N, 16)
            q = (words[:, :, None] >> shifts) & 0xF  # (BLOCK_N, 16, 8)
            s = tl.load(s_ptr + rnc * G + g).to(tl.float32)
            z = tl.load(z_ptr + rnc * G + g).to(tl.float32)
            xt = tl.load(x_rows + g * 128 + kofs[None, :], mask=m_ok[:, None], other=0.0)  # (BLOCK_M, 128)
            if MAGIC and xdt != tl.float32:
                # the codes as 16-bit floats MAGIC + q by one OR (exact: 128 + q in bf16, 1024 + q in fp16),
                # no int -> float conversions; the group's dot then carries MAGIC X_g, which comes off with
                # the zero point once per (token, row): sum (q - z) x = S - (MAGIC + z) X_g (fp32)
                if xdt == tl.bfloat16:
                    bits = 0x4300
                    mf = 128.0
                else:
                    bits = 0x6400
                    mf = 1024.0
                wq = tl.reshape((q | bits).to(tl.int16).to(xdt, bitcast=True), (BLOCK_N, 128))
                part = tl.dot(xt, tl.trans(wq))  # (BLOCK_M, BLOCK_N) fp32, S of this group
                xsum = tl.sum(xt.to(tl.float32), axis=1)  # X_g per token
                acc += (part - xsum[:, None] * (mf + z)[None, :]) * s[None, :]
            else:
                w = (q.to(tl.float32) - z[:, None, None]) * s[:, None, None]
                w = tl.reshape(w, (BLOCK_N, 128)).to(xdt)
                acc += tl.dot(xt, tl.trans(w))
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


def launch_tc(cfg: Config, x2: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor) -> torch.Tensor:
    """y (M, N) in x2's dtype by the tc tiles with cfg (block_m > 0)."""
    M, K = x2.shape
    N = qw.shape[0]
    y = torch.empty(M, N, device=x2.device, dtype=x2.dtype)
    grid = (triton.cdiv(N, cfg.block_n), triton.cdiv(M, cfg.block_m))
    _w4_gemv_tc_kernel[grid](x2, qw, scales, zeros, y, M, N, K // 8, x2.stride(0), cfg.block_m, cfg.block_n,
                             cfg.stages, cfg.fold, num_warps=cfg.num_warps)
    return y


def tc_bucket(M: int) -> int:
    """Tuning bucket of the tc tiles: the next power of two >= M from 32 to TC_TUNE_MAX_M, 0 above."""
    if M > TC_TUNE_MAX_M:
        return 0
    return max(32, 1 << (M - 1).bit_length())


def w4a16_gemv_tc(x2: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  config: Optional[Config] = None) -> torch.Tensor:
    """x2 (M, K) contiguous, any M, on the GEMV layout -> (M, N) in x2's dtype (the tc tiles; tuned per
    bucket up to TC_TUNE_MAX_M, CONFIGS_TC[0] beyond)."""
    M, K = x2.shape
    N = qw.shape[0]
    assert qw.shape == (N, K // 8) and qw.is_contiguous() and scales.shape == (N, K // GEMV_GS), \
        (tuple(qw.shape), tuple(scales.shape), K)
    b = tc_bucket(M)
    cands = list(CONFIGS_TC)

    def run(cfg, qw=qw, s=scales, z=zeros):
        return launch_tc(cfg, x2, qw, s, z)

    def ref(qw=qw, s=scales, z=zeros):
        return x2.float() @ quant_gemv.dequantize_w4_gemv(qw, s, z).T

    if config is None:
        config = cands[0] if b == 0 else quant_gemv.tuned_config(
            ("w4gt", N, K, b, GEMV_GS, x2.dtype, x2.device), cands, run, (qw, scales, zeros), ref)
    return run(config)


def run_gemv_config(cfg: Config, x2, qw, scales, zeros) -> Optional[torch.Tensor]:
    """quant_gemv.w4a16_gemv's runner for this module's configs (mma, tc); None for its own."""
    if cfg.mma:
        return launch_mma(cfg, x2, qw, scales, zeros)
    if cfg.block_m:
        return launch_tc(cfg, x2, qw, scales, zeros)
    return None


def extra_gemv_configs(x2: torch.Tensor, N: int, scales: torch.Tensor, zeros: torch.Tensor) -> list[Config]:
    """This module's candidates for quant_gemv.w4a16_gemv (M <= 16): the mma configs (M <= 8, CUDA),
    then the 16-token tc tiles (M >= 2)."""
    M = x2.shape[0]
    return mma_configs(x2, N, scales, zeros) + (list(CONFIGS_TC_SKINNY) if M >= 2 else [])
