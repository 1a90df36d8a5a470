"""Parity tests: kernels/flash_decode.py against the fp32 references in kernels/attention_ref.py.

Runs on a CUDA GPU, or on CPU through Triton's interpreter:
    TRITON_INTERPRET=1 python -m pytest -q kernels/tests/test_flash_decode.py
Skipped when neither is available.

Tolerances: per element, atol + rtol * |ref| per dtype, stated and measured in attention_cases.py
(the split merge is fp32). A length-1 sequence returns v[0] itself, rounded: the rtol's case.
"""


import pytest
import torch

from kernels.tests.attention_cases import DEVICE, check_attention, gpu_only, needs_backend, randn

from kernels.attention_ref import attention_ref, paged_decode_ref, paged_kv
from kernels.flash_decode import choose_num_splits, flash_decode, paged_flash_decode

pytestmark = needs_backend


def _lens(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _contiguous_ref(q, k_cache, v_cache, seq_lens):
    """Per sequence: attention_ref of its one query over its first seq_lens[b] cached tokens."""
    rows = []
    for b, n in enumerate(seq_lens.tolist()):
        rows.append(attention_ref(q[b, None, :, None].float(), k_cache[b:b + 1, :, :n].float(),
                                  v_cache[b:b + 1, :, :n].float())[0, :, 0])  # (Hq, D)
    return torch.stack(rows)  # (B, Hq, D)


def _paged(k_cache, v_cache, block_size, seed):
    """Scatter a contiguous (B, Hkv, S_max, D) cache into shuffled blocks of block_size tokens.
    Returns k_pages, v_pages (num_blocks, block_size, Hkv, D) and block_table (B, max_blocks) int32."""
    return paged_kv(k_cache, v_cache, block_size, seed, spare_blocks=3)  # 3 NaN blocks no table names


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(4, 2), (4, 4)], ids=["gqa4x2", "mha4"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("num_splits", [None, 3])
def test_flash_decode_matches_reference(dtype, heads, D, num_splits):
    Hq, Hkv = heads
    S_max, seq_lens = 70, _lens([1, 37, 70, 16])  # 1, non-multiples of BLOCK_N, full, exact multiple
    B = seq_lens.numel()
    q = randn(B, Hq, D, dtype=dtype, seed=1)
    k_cache = randn(B, Hkv, S_max, D, dtype=dtype, seed=2)
    v_cache = randn(B, Hkv, S_max, D, dtype=dtype, seed=3)
    k_cache[0, :, 1:] = float("nan")  # tokens past seq_lens must never be read
    v_cache[0, :, 1:] = float("nan")
    want = _contiguous_ref(q, k_cache, v_cache, seq_lens)
    out = torch.full_like(q, float("nan"))
    got = flash_decode(q, k_cache, v_cache, seq_lens, out=out, num_splits=num_splits)
    assert got.data_ptr() == out.data_ptr()
    check_attention(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_decode_matches_reference(dtype, block_size):
    Hq, Hkv, D, S_max = 4, 2, 128, 80
    seq_lens = _lens([1, 37, 80, 50])
    B = seq_lens.numel()
    q = randn(B, Hq, D, dtype=dtype, seed=5)
    k_cache = randn(B, Hkv, S_max, D, dtype=dtype, seed=6)
    v_cache = randn(B, Hkv, S_max, D, dtype=dtype, seed=7)
    k_pages, v_pages, block_table = _paged(k_cache, v_cache, block_size, seed=block_size)
    want = paged_decode_ref(q.float(), k_pages.float(), v_pages.float(), block_table, seq_lens)
    # Reference ladder: paged reference == contiguous reference on the same tokens.
    torch.testing.assert_close(want, _contiguous_ref(q, k_cache, v_cache, seq_lens), atol=1e-5, rtol=1e-5)
    got = paged_flash_decode(q, k_pages, v_pages, block_table, seq_lens, out=torch.full_like(q, float("nan")),
                             num_splits=2)
    check_attention(got, want, dtype)
    # ... and the contiguous kernel on the same tokens meets the same bound.
    check_attention(flash_decode(q, k_cache, v_cache, seq_lens, num_splits=2), want, dtype)


def test_empty_sequence_gives_zero():
    q = randn(2, 4, 64, dtype=torch.float16, seed=9)
    k_cache = randn(2, 2, 24, 64, dtype=torch.float16, seed=10)
    v_cache = randn(2, 2, 24, 64, dtype=torch.float16, seed=11)
    seq_lens = _lens([0, 24])
    got = flash_decode(q, k_cache, v_cache, seq_lens, out=torch.full_like(q, float("nan")), num_splits=2)
    assert (got[0] == 0).all()
    check_attention(got[1:], _contiguous_ref(q[1:], k_cache[1:], v_cache[1:], seq_lens[1:]), torch.float16)


def test_choose_num_splits_fills_the_gpu():
    # Programs = B * Hkv * splits: at least ~one per SM for small batches.
    assert choose_num_splits(8, 8, 4096, num_sms=132) * 64 >= 0.9 * 132
    assert choose_num_splits(1, 8, 4096, num_sms=132) * 8 >= 0.9 * 132
    assert choose_num_splits(1, 1, 100, num_sms=132) == 1  # too short to split
    assert choose_num_splits(256, 8, 4096, num_sms=132) <= 2  # batch already fills it
    assert choose_num_splits(64, 8, 4096, num_sms=132) == 2  # a serving batch: >= 4 programs per SM


def test_rejects_bad_inputs():
    q = randn(2, 4, 64, dtype=torch.float16, seed=12)
    k_cache = randn(2, 2, 16, 64, dtype=torch.float16, seed=13)
    with pytest.raises(ValueError, match="seq_lens must be int32"):
        flash_decode(q, k_cache, k_cache, torch.tensor([1, 2], dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="multiple of Hkv"):
        flash_decode(q[:, :3], k_cache, k_cache, _lens([1, 2]))
    pages = randn(4, 16, 2, 64, dtype=torch.float16, seed=14)
    with pytest.raises(ValueError, match="block_table must be int32"):
        paged_flash_decode(q, pages, pages, torch.zeros(2, 2, dtype=torch.int64, device=DEVICE), _lens([1, 2]))


# ----------------------------------------------------------------------------- GPU only


@gpu_only
@pytest.mark.parametrize("block_size", [16, 64])
def test_gpu_large_paged(block_size):
    B, Hq, Hkv, D, S_max = 8, 32, 8, 128, 4103
    seq_lens = _lens([4103, 1, 4096, 2000, 777, 3000, 129, 4000])
    q = randn(B, Hq, D, dtype=torch.bfloat16, seed=21)
    k_cache = randn(B, Hkv, S_max, D, dtype=torch.bfloat16, seed=22)
    v_cache = randn(B, Hkv, S_max, D, dtype=torch.bfloat16, seed=23)
    want = _contiguous_ref(q, k_cache, v_cache, seq_lens)
    got = flash_decode(q, k_cache, v_cache, seq_lens, out=torch.full_like(q, float("nan")))
    check_attention(got, want, torch.bfloat16)
    k_pages, v_pages, block_table = _paged(k_cache, v_cache, block_size, seed=block_size)
    got = paged_flash_decode(q, k_pages, v_pages, block_table, seq_lens, out=torch.full_like(q, float("nan")))
    check_attention(got, want, torch.bfloat16)
