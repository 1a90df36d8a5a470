"""kernels/gemv8.py: the row-streaming GEMV (int8 W8A16, FP8 weight-only, bf16, and the fused W8A8 int8 /
FP8 one-token paths), every config, against the fp32 reference of its dequantized operands (GPU, or the
CPU under TRITON_INTERPRET=1), and planted faults the tolerance must reject."""

import pytest
import torch

from kernels._triton import run_device
from kernels.gemv8 import GEMV8_CONFIGS
from parity.tolerance import Tol, assert_close, compare

DEVICE = run_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a GPU or TRITON_INTERPRET=1")
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
# The weight conversions are exact (int8 through the 2^23 magic, bf16 halves by shift / mask, e4m3 by
# Triton's conversion) and the activation codes are act_quant_gemv's grid bit for bit, so only the fp32
# summation order differs from the reference: ~1e-6 relative in fp32 (the interpreter); 1e-4 leaves
# room and is still 30x below the smallest planted fault (test_planted_faults_fail: a byte order or a
# neighbouring row's scale moves outputs by O(their size)). bf16 (GPU): the output's rounding, 2^-8: 2e-2.
# Planted in the kernel (2026-11-30, interpreter): byte 2's offset one code off, the bf16 low half shifted by
# one bit: test_every_config fails on both.
TOL = {torch.float32: Tol(atol=1e-4, rtol=1e-4), torch.bfloat16: Tol(atol=2e-2, rtol=2e-2)}
N, K = 48, 2048  # N = 48: a partial last row block for BLOCK_N 32, and 16-divisible like the Llama shapes (the
# GPU run's compiles are shared with bench.quant_decode's); K: every config's tile divides it


def case(seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    x[:, 5] = 6.0  # one large input: the fused per-token scale comes from it
    w8 = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    s8 = torch.rand(N, generator=g) * 0.01 + 1e-3  # bf16 on the GPU, as bench.quant_decode's (shared compiles)
    wf = torch.randn(N, K, generator=g) * 3
    wf[:, :64] *= 1e-3  # small weights: subnormal e4m3 codes
    s_f = wf.abs().amax(dim=1) / 448.0
    w_fp8 = (wf / s_f[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    wb = (torch.randn(N, K, generator=g) * 0.05).bfloat16()
    return (x.to(DEVICE, DTYPE), w8.to(DEVICE), s8.to(DEVICE, DTYPE), w_fp8.to(DEVICE), s_f.to(DEVICE), wb.to(DEVICE))


def deq(w, s):
    return w.float() * s.float()[:, None]


@pytest.mark.parametrize("cfg", GEMV8_CONFIGS, ids=[str(c) for c in GEMV8_CONFIGS])
def test_every_config(cfg):
    from kernels.gemv8 import bf16_gemv, fp8_wo_gemv, w8a16_gemv

    x, w8, s8, wf, sf, wb = case(seed=1)
    tol = TOL[DTYPE]
    assert_close(w8a16_gemv(x, w8, s8, cfg).float(), x.float() @ deq(w8, s8).T, tol, f"w8a16 {cfg}")
    assert_close(fp8_wo_gemv(x, wf, sf, cfg).float(), x.float() @ deq(wf, sf).T, tol, f"fp8 wo {cfg}")
    assert_close(bf16_gemv(x, wb, cfg).float(), x.float() @ wb.float().T, tol, f"bf16 {cfg}")


@pytest.mark.parametrize("cfg", GEMV8_CONFIGS[:4] + GEMV8_CONFIGS[-2:], ids=str)
def test_fused_act_quant(cfg):
    """The W8A8 int8 / FP8 one-token paths through this kernel: act_quant_gemv's references (two tokens)."""
    from kernels.act_quant_gemv import FP8_MAX, _quant_ref, fp8_gemv, w8a8_gemv

    x, w8, s8, wf, sf, _ = case(seed=2, M=2)
    x[1] *= 0.01
    xq, sx = _quant_ref(x, 127.0)  # the torch grids (quant.fast_linear.quantize_tokens_int8 / quantize_fp8)
    ref = (xq.double() @ w8.double().T).float() * sx * s8.float()
    assert_close(w8a8_gemv(x, w8, s8, cfg).float(), ref, TOL[DTYPE], f"w8a8 {cfg}")
    xq, sx = _quant_ref(x, FP8_MAX)
    ref = (xq.double() @ wf.float().double().T).float() * sx * sf.float()
    assert_close(fp8_gemv(x, wf, sf, cfg).float(), ref, TOL[DTYPE], f"fp8 {cfg}")


def test_batch_rows_and_default_pick():
    """M > 1 (one program row per token) and the untuned default config (interpreter / capture)."""
    from kernels.gemv8 import fp8_wo_gemv

    x, _, _, wf, sf, _ = case(seed=3, M=3)
    assert_close(fp8_wo_gemv(x, wf, sf).float(), x.float() @ deq(wf, sf).T, TOL[DTYPE], "fp8 wo M=3")


def test_planted_faults_fail():
    """Each fault the tolerance exists for, planted in the reference, is rejected: int8 bytes of a word in
    the wrong order, the neighbouring row's scale, e4m3 read as the neighbouring input, bf16 halves swapped."""
    from kernels.gemv8 import bf16_gemv, fp8_wo_gemv, w8a16_gemv

    x, w8, s8, wf, sf, wb = case(seed=4)
    cfg = GEMV8_CONFIGS[0]
    tol = TOL[DTYPE]
    y8 = w8a16_gemv(x, w8, s8, cfg).float()
    swapped = w8.reshape(N, K // 4, 4).flip(-1).reshape(N, K)
    assert not compare(y8, x.float() @ deq(swapped, s8).T, tol, "bytes").ok
    assert not compare(y8, x.float() @ deq(w8, s8.roll(1)).T, tol, "row scale").ok
    yf = fp8_wo_gemv(x, wf, sf, cfg).float()
    assert not compare(yf, x.float().roll(1, dims=1) @ deq(wf, sf).T, tol, "fp8 input").ok
    yb = bf16_gemv(x, wb, cfg).float()
    halves = wb.reshape(N, K // 2, 2).flip(-1).reshape(N, K)
    assert not compare(yb, x.float() @ halves.float().T, tol, "bf16 halves").ok
    assert compare(y8, x.float() @ deq(w8, s8).T, tol, "ok").ok  # and the right reference passes

