"""Parity tests: kernels/flash_attention.py against the fp32 references in kernels/attention_ref.py.

Runs on a CUDA GPU, or on CPU through Triton's interpreter:
    TRITON_INTERPRET=1 python -m pytest -q kernels/tests/test_flash_attention.py
Skipped when neither is available. Interpreter shapes stay tiny (seq <= 64); the larger
shapes run only on a GPU.

Tolerances: per element, atol + rtol * |ref| per dtype, stated and measured in attention_cases.py.
"""


import pytest
import torch

from kernels.tests.attention_cases import (DEVICE, check_attention, check_flash_attention, gpu_only, needs_backend,
                                           poisoned_like, qkv, randn)

from kernels.attention_ref import attention_ref, varlen_attention_ref
from kernels.flash_attention import flash_attention, flash_attention_varlen

pytestmark = needs_backend


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa4x2", "mha2"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("S", [37, 50])
def test_matches_reference(dtype, causal, heads, D, S):
    check_flash_attention(dtype, causal, heads, D, S)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lens", [(16, 50), (1, 37), (37, 64), (50, 37)], ids=lambda x: f"q{x[0]}kv{x[1]}")
def test_causal_unequal_lengths_bottom_right(dtype, lens):
    """S_q != S_kv: query i sees keys j <= i + S_kv - S_q. With S_q > S_kv the first rows see
    nothing and must be 0 (flash-attn's convention), not NaN."""
    S_q, S_kv = lens
    q, k, v = qkv(2, 4, 2, S_q, S_kv, 64, dtype, seed=S_q * 7 + S_kv)
    want = attention_ref(q.float(), k.float(), v.float(), causal=True)
    got = flash_attention(q, k, v, causal=True, out=poisoned_like(q))
    check_attention(got, want, dtype)
    if S_q > S_kv:
        assert (got[:, :, : S_q - S_kv] == 0).all()


def test_non_causal_unequal_lengths():
    q, k, v = qkv(1, 4, 2, 20, 53, 128, torch.float16, seed=3)
    want = attention_ref(q.float(), k.float(), v.float(), causal=False)
    check_attention(flash_attention(q, k, v, out=poisoned_like(q)), want, torch.float16)


@pytest.mark.parametrize("causal", [False, True])
def test_bshd_strided_view(causal):
    """(B, S, H, D) storage passed as a transposed view; the output keeps q's strides."""
    B, S, Hq, Hkv, D = 2, 41, 4, 2, 64
    q = randn(B, S, Hq, D, dtype=torch.bfloat16, seed=11).transpose(1, 2)  # (B, Hq, S, D) view
    k = randn(B, S, Hkv, D, dtype=torch.bfloat16, seed=12).transpose(1, 2)
    v = randn(B, S, Hkv, D, dtype=torch.bfloat16, seed=13).transpose(1, 2)
    want = attention_ref(q.float(), k.float(), v.float(), causal)
    got = flash_attention(q, k, v, causal)
    assert got.stride() == q.stride()
    check_attention(got, want, torch.bfloat16)
    out = poisoned_like(q)
    flash_attention(q, k, v, causal, out=out)
    check_attention(out, want, torch.bfloat16)


def test_custom_sm_scale():
    q, k, v = qkv(1, 2, 2, 33, 33, 64, torch.float16, seed=5)
    want = attention_ref(q.float(), k.float(), v.float(), causal=True, sm_scale=0.3)
    check_attention(flash_attention(q, k, v, causal=True, sm_scale=0.3), want, torch.float16)


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 128])
def test_varlen_matches_reference(dtype, causal, D):
    lens_q, lens_k = [5, 37, 20], [5, 50, 20]  # chunked-prefill style: seq 1 has 13 cached tokens
    Hq, Hkv = 4, 2
    q = randn(sum(lens_q), Hq, D, dtype=dtype, seed=21)
    k = randn(sum(lens_k), Hkv, D, dtype=dtype, seed=22)
    v = randn(sum(lens_k), Hkv, D, dtype=dtype, seed=23)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    want = varlen_attention_ref(q.float(), k.float(), v.float(), cu_q, cu_k, causal)
    out = poisoned_like(q)
    flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal, out=out)
    check_attention(out, want, dtype)


def test_varlen_agrees_with_padded_batch():
    """Reference ladder: the varlen kernel on one sequence == the batched kernel on it."""
    lens = [9, 33, 17]
    q = randn(sum(lens), 4, 64, dtype=torch.float16, seed=31)
    k = randn(sum(lens), 2, 64, dtype=torch.float16, seed=32)
    v = randn(sum(lens), 2, 64, dtype=torch.float16, seed=33)
    cu = _cu(lens)
    got = flash_attention_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True)
    s0, s1 = cu[1].item(), cu[2].item()
    one = flash_attention(q[s0:s1].transpose(0, 1)[None], k[s0:s1].transpose(0, 1)[None],
                          v[s0:s1].transpose(0, 1)[None], causal=True)[0].transpose(0, 1)
    torch.testing.assert_close(got[s0:s1], one, atol=0, rtol=0)


def test_rejects_bad_inputs(monkeypatch):
    q, k, v = qkv(1, 4, 2, 16, 16, 64, torch.float16)
    cases = {
        "dtypes": (q.float(), k.float(), v.float()),
        "head dim": (q[..., :48].contiguous(), k[..., :48].contiguous(), v[..., :48].contiguous()),
        "multiple of kv heads": (q[:, :3].contiguous(), k, v),
        "contiguous": (q.transpose(2, 3), k, v),
    }
    for needle, args in cases.items():
        with pytest.raises(ValueError, match=needle):
            flash_attention(*args)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_attention(q.cpu(), k.cpu(), v.cpu())


# ----------------------------------------------------------------------------- GPU only


@gpu_only
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("S", [1000, 2065])
def test_gpu_large(causal, S):
    q, k, v = qkv(2, 32, 8, S, S, 128, torch.bfloat16, seed=S)
    want = attention_ref(q.float(), k.float(), v.float(), causal)
    got = flash_attention(q, k, v, causal, out=poisoned_like(q))
    check_attention(got, want, torch.bfloat16)
    # TMA (sm_90) and pointer paths must agree.
    check_attention(flash_attention(q, k, v, causal, use_tma=False), want, torch.bfloat16)


@gpu_only
def test_gpu_varlen_large():
    lens_q, lens_k = [700, 1, 1500], [900, 129, 1500]
    q = randn(sum(lens_q), 16, 128, dtype=torch.float16, seed=41)
    k = randn(sum(lens_k), 4, 128, dtype=torch.float16, seed=42)
    v = randn(sum(lens_k), 4, 128, dtype=torch.float16, seed=43)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    want = varlen_attention_ref(q.float(), k.float(), v.float(), cu_q, cu_k, causal=True)
    got = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                 out=poisoned_like(q))
    check_attention(got, want, torch.float16)
