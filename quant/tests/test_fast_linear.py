"""quant/fast_linear.py's kernel layers against the reference layers they replace (quant/qlinear.py,
quant/int8.py). The Triton layers run on the CPU under TRITON_INTERPRET=1; the torch kernels
(_int_mm, _weight_int4pack_mm, _scaled_mm) on a GPU; the W8A8 integer path's CPU form everywhere."""

import pytest
import torch
from torch import nn

from kernels._triton import run_device
from parity.tolerance import Tol, assert_close, compare
from quant import FP8Linear, Int8WeightOnlyLinear, QuantizationError, QuantLinear
from quant.fast_linear import (FP8RowwiseLinear, FP8WeightOnlyLinear, Int4PackLinear, W4A16Linear, W8A8Linear, W8A16Linear,
                               int8_matmul, quantize_tokens_int8, to_fast)
from quant.rtn import rtn_quantize

TRITON_DEV = run_device()
CUDA = torch.cuda.is_available()
# Each fast layer against its reference layer on the same codes. fp32 (CPU): only the summation
# order differs (and W8A8's exact integer products vs their fp32 dequantized values): 1e-4.
# bf16 (GPU): the reference dequantizes to bf16 and multiplies there, the kernel rounds its output
# (and tinygemm its bf16 scale/zero, e4m3 _scaled_mm its fp32 accumulate) - a few 2^-8 steps of
# the output scale: 3e-2 relative, 3e-2 absolute at outputs of O(1). A wrong zero point, group or
# sign moves outputs by O(1): the planted tests show the checks catch one.
TOL = {torch.float32: Tol(atol=1e-4, rtol=1e-4), torch.bfloat16: Tol(atol=3e-2, rtol=3e-2)}


def linear(in_f, out_f, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = (torch.randn(out_f, in_f, generator=g) * in_f ** -0.5)
    return lin.to(device, dtype)


def w4_ref(lin, gs=128):
    return QuantLinear.from_quantized(lin, *rtn_quantize(lin.weight, 4, gs, False), bits=4, group_size=gs, sym=False)


def w8a8_ref(lin):
    return QuantLinear.from_quantized(lin, *rtn_quantize(lin.weight, 8, -1, True), bits=8,
                                      group_size=lin.in_features, sym=True, act_bits=8)


def x_of(M, K, seed=1, device="cpu", dtype=torch.float32):
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


@pytest.mark.skipif(TRITON_DEV is None, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("M", [1, 5, 20])
def test_triton_layers_match_reference(M):
    dev, dt = TRITON_DEV, (torch.bfloat16 if TRITON_DEV == "cuda" else torch.float32)
    lin = linear(256, 96, device=dev, dtype=dt)
    ref = w4_ref(lin)
    x = x_of(M, 256, device=dev, dtype=dt)
    assert_close(W4A16Linear(ref)(x).float(), ref(x).float(), TOL[dt], f"W4A16Linear M={M}")
    ref8 = Int8WeightOnlyLinear.from_linear(lin)
    assert_close(W8A16Linear(ref8)(x).float(), ref8(x).float(), TOL[dt], f"W8A16Linear M={M}")


def test_w8a8_integer_path_matches_reference_on_cpu():
    lin = linear(192, 80, seed=2)
    ref = w8a8_ref(lin)
    x = x_of(6, 192, seed=3) * 3
    fast = W8A8Linear(ref)
    assert fast.weight.dtype == torch.int8 and fast.weight.shape == (80, 192)
    assert_close(fast(x), ref(x), TOL[torch.float32], "W8A8Linear (CPU integer path)")
    fast.weight.add_(1)  # planted: the zero point off by one (codes - 127)
    assert not compare(fast(x), ref(x), TOL[torch.float32]).ok


def test_int8_matmul_is_exact_and_tokens_are_per_row():
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-127, 128, (5, 4096), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (24, 4096), generator=g, dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b.T), (a.long() @ b.long().T).to(torch.int32))
    x = x_of(3, 64)
    x[1] *= 100
    xq, s = quantize_tokens_int8(x)
    assert s.shape == (3, 1) and int(xq.abs().amax(dim=1).min()) == 127  # each row uses its own full range


def test_to_fast_errors_name_the_layer():
    model = nn.Sequential(linear(256, 64))
    with pytest.raises(QuantizationError, match="no quantized layers"):
        to_fast(model, "triton")
    with pytest.raises(QuantizationError, match="unknown fast backend"):
        to_fast(model, "cutlass")
    ref = w4_ref(linear(256, 64))
    ref.g_idx.copy_(ref.g_idx.flip(0))  # act-order style, not contiguous
    with pytest.raises(QuantizationError, match="0: act-order"):
        to_fast(nn.Sequential(ref), "triton")
    with pytest.raises(QuantizationError, match="does not run FP8Linear"):
        to_fast(nn.Sequential(FP8Linear.from_linear(linear(64, 32), True, "per_token")), "int_mm")
    model = nn.Sequential(w8a8_ref(linear(64, 32)))
    assert to_fast(model, "int_mm") == 1 and isinstance(model[0], W8A8Linear)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch's int4pack, _int_mm, _scaled_mm kernels)")
@pytest.mark.parametrize("M", [1, 8, 33])
def test_torch_kernel_layers_match_reference_gpu(M):
    dt = torch.bfloat16
    lin = linear(4096, 512, seed=M, device="cuda", dtype=dt)
    x = x_of(M, 4096, device="cuda", dtype=dt)
    ref = w4_ref(lin)
    assert_close(Int4PackLinear(ref)(x).float(), ref(x).float(), TOL[dt], f"Int4PackLinear M={M}")
    ref = w8a8_ref(lin)
    assert_close(W8A8Linear(ref)(x).float(), ref(x).float(), TOL[dt], f"W8A8Linear int_mm M={M}")
    ref = FP8Linear.from_linear(lin, True, "per_token")
    assert_close(FP8RowwiseLinear(ref)(x).float(), ref(x).float(), TOL[dt], f"FP8RowwiseLinear M={M}")
    ref = w4_ref(lin)
    assert_close(W4A16Linear(ref)(x).float(), ref(x).float(), TOL[dt], f"W4A16Linear M={M}")
    ref8 = Int8WeightOnlyLinear.from_linear(lin)
    assert_close(W8A16Linear(ref8)(x).float(), ref8(x).float(), TOL[dt], f"W8A16Linear M={M}")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_planted_int4pack_zero_fails_gpu():
    lin = linear(4096, 256, seed=9, device="cuda", dtype=torch.bfloat16)
    x = x_of(4, 4096, device="cuda", dtype=torch.bfloat16)
    ref = w4_ref(lin)
    fast = Int4PackLinear(ref)
    fast.scale_zero[..., 1] = (ref.scales.float() * (7 - ref.zeros.float())).bfloat16()  # planted: 7 for 8
    assert not compare(fast(x).float(), ref(x).float(), TOL[torch.bfloat16]).ok


@pytest.mark.skipif(TRITON_DEV is None, reason="needs a GPU or TRITON_INTERPRET=1")
def test_one_token_w8a8_and_fp8_take_the_fused_gemv():
    """At one token W8A8Linear / FP8RowwiseLinear run kernels.act_quant_gemv (activation quantization
    fused); each still matches its reference layer, and a planted weight-scale fault fails."""
    import quant.fast_linear as fl

    dev, dt = TRITON_DEV, (torch.bfloat16 if TRITON_DEV == "cuda" else torch.float32)
    lin = linear(512, 48, seed=5, device=dev, dtype=dt)
    x = x_of(1, 512, seed=6, device=dev, dtype=dt) * 3
    assert fl._gemv_ok(x)
    for fast, ref, what in ((W8A8Linear(w8a8_ref(lin)), w8a8_ref(lin), "W8A8Linear"),
                            (FP8RowwiseLinear(FP8Linear.from_linear(lin, True, "per_token")),
                             FP8Linear.from_linear(lin, True, "per_token"), "FP8RowwiseLinear")):
        assert_close(fast(x).float(), ref(x).float(), TOL[dt], f"{what} one token (fused GEMV)")
        fast.weight_scale.copy_(fast.weight_scale.roll(1, -1))  # planted: the neighbouring row's scale
        assert not compare(fast(x).float(), ref(x).float(), TOL[dt]).ok


@pytest.mark.skipif(TRITON_DEV is None, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("M", [1, 3, 20])
def test_fp8_weight_only_layer(M):
    """FP8WeightOnlyLinear (kernels.gemv8.fp8_wo_gemv up to 16 tokens, the dequantized F.linear above) against
    FP8Linear(per_row, act=None); a planted weight-scale fault (the neighbouring row's) fails."""
    dev, dt = TRITON_DEV, (torch.bfloat16 if TRITON_DEV == "cuda" else torch.float32)
    lin = linear(512, 48, seed=7, device=dev, dtype=dt)
    ref = FP8Linear.from_linear(lin, True, None)
    fast = FP8WeightOnlyLinear(FP8Linear.from_linear(lin, True, None))  # its own buffers (a view of ref's would move both)
    x = x_of(M, 512, seed=8, device=dev, dtype=dt) * 3
    assert_close(fast(x).float(), ref(x).float(), TOL[dt], f"FP8WeightOnlyLinear M={M}")
    fast.weight_scale.copy_(fast.weight_scale.roll(1))
    assert not compare(fast(x).float(), ref(x).float(), TOL[dt]).ok
    with pytest.raises(QuantizationError, match="fp8_wo"):
        FP8WeightOnlyLinear(FP8Linear.from_linear(lin, True, "per_token"))
