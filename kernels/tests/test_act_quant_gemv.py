"""kernels/act_quant_gemv.py: the one-token W8A8 int8 / FP8 GEMVs with fused per-token activation
quantization, every config, against the fp32 reference of the torch quantization grids (GPU, or
the CPU under TRITON_INTERPRET=1), and planted faults the check must reject."""

import pytest
import torch

from kernels._triton import run_device
from kernels.act_quant_gemv import CONFIGS
from parity.tolerance import Tol, assert_close, compare

DEVICE = run_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a GPU or TRITON_INTERPRET=1")
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
# The activation codes are the torch grids' bit for bit (correctly rounded division, ties to even,
# exact e4m3 rounding), so only the fp32 summation order differs: 1e-4 in fp32 (the interpreter).
# One activation rounded to the neighbouring code moves an output by ~|x_k w_k| / 16 (fp8) or
# / 127 (int8) against outputs of ~sqrt(K) |x w|: > 1e-4 relative, so the fp32 check sees a grid
# mismatch. bf16 (GPU): the output's rounding, 2^-8: 2e-2.
TOL = {torch.float32: Tol(atol=1e-4, rtol=1e-4), torch.bfloat16: Tol(atol=2e-2, rtol=2e-2)}
N, K = 48, 1024  # N = 48: a partial last row block for BLOCK_N 32; 16-divisible as the Llama shapes


def case(seed=0, M=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * 2
    x[:, 7] = 9.0  # one large input: the per-token scale comes from it, small inputs hit subnormal e4m3 codes
    w8 = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    s8 = torch.rand(N, generator=g) * 0.01 + 1e-3
    wf = torch.randn(N, K, generator=g) * 3
    s_f = wf.abs().amax(dim=1) / 448.0
    w_fp8 = (wf / s_f[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return (x.to(DEVICE, DTYPE), w8.to(DEVICE), s8.to(DEVICE), w_fp8.to(DEVICE), s_f.to(DEVICE))


def ref_int8(x, w, s):
    from quant.fast_linear import quantize_tokens_int8

    xq, sx = quantize_tokens_int8(x)
    return (xq.double() @ w.double().T).float() * sx * s.float()


def ref_fp8(x, w, s):
    xf = x.float()
    sx = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / 448.0)).clamp(min=1e-12)
    xq = (xf / sx).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return (xq.double() @ w.float().double().T).float() * sx * s.float()


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_every_config(cfg):
    from kernels.act_quant_gemv import fp8_gemv, w8a8_gemv

    x, w8, s8, wf, sf = case(seed=1, M=2)  # two tokens: each row its own scale
    x[1] *= 0.01
    assert_close(w8a8_gemv(x, w8, s8, cfg).float(), ref_int8(x, w8, s8), TOL[DTYPE], f"w8a8 {cfg}")
    assert_close(fp8_gemv(x, wf, sf, cfg).float(), ref_fp8(x, wf, sf), TOL[DTYPE], f"fp8 {cfg}")


def test_planted_faults_fail():
    """The neighbouring row's weight scale, int8 bytes reversed within each word, and activations
    quantized to e4m3 with round-toward-zero (truncation) instead of ties-to-even must each fail."""
    from kernels.act_quant_gemv import CONFIGS, fp8_gemv, w8a8_gemv

    cfg = CONFIGS[0]
    x, w8, s8, wf, sf = case(seed=2)
    want8, wantf = ref_int8(x, w8, s8), ref_fp8(x, wf, sf)
    assert compare(w8a8_gemv(x, w8, s8, cfg).float(), want8, TOL[DTYPE]).ok
    assert not compare(w8a8_gemv(x, w8, s8.roll(1), cfg).float(), want8, TOL[DTYPE]).ok
    swapped = w8.view(N, K // 4, 4).flip(-1).reshape(N, K).contiguous()
    assert not compare(w8a8_gemv(x, swapped, s8, cfg).float(), want8, TOL[DTYPE]).ok
    assert compare(fp8_gemv(x, wf, sf, cfg).float(), wantf, TOL[DTYPE]).ok
    assert not compare(fp8_gemv(x, wf, sf.roll(1), cfg).float(), wantf, TOL[DTYPE]).ok
    if DTYPE == torch.float32:  # the grid check needs fp32 outputs to resolve one code step
        xf = x.float()
        sx = xf.abs().amax(dim=-1, keepdim=True) / 448.0
        v = (xf / sx).clamp(-448, 448)
        ulp = torch.exp2(torch.floor(torch.log2(v.abs().clamp(min=2.0 ** -6))) - 3)  # e4m3 step of v's binade
        trunc = torch.sign(v) * torch.floor(v.abs() / ulp) * ulp  # round toward zero on the e4m3 grid
        assert not torch.equal(trunc, v.to(torch.float8_e4m3fn).float())
        wrong = (trunc.double() @ wf.float().double().T).float() * sx * sf.float()
        assert not compare(wrong, wantf, TOL[DTYPE]).ok  # the tolerance resolves one e4m3 step
