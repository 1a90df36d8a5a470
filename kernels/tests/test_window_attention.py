"""Sliding-window attention in the Triton kernels (flash_attention, its varlen form, flash_decode
and paged_flash_decode) against the fp32 reference with the window mask.

Runs on a CUDA GPU, or on CPU through Triton's interpreter (small shapes):
    TRITON_INTERPRET=1 python -m pytest -q kernels/tests/test_window_attention.py

Semantics (Mistral / transformers): the query at position p sees keys j with p - window < j <= p.
test_window_rule_matches_transformers pins that rule, in kernels.attention_ref.window_visible and
model.masks.visible_keys, to transformers' own sliding_window_causal_mask_function; every kernel
case then compares against attention_ref(..., window=w) within the per-dtype bound of
attention_cases.py (TOL), for windows smaller than, equal to and larger than the sequence.

"Skipped, not masked": keys below every query's window hold NaN (and, paged, their block table
entries name a NaN block). A kernel that loads them, even to mask them, turns 0 * NaN into NaN in
its output, which the per-element check fails. The planted fault: each kernel run with window + 1
(one key too many) is rejected by the same check (test_off_by_one_window_is_rejected).
"""

import pytest
import torch

from kernels.attention_ref import attention_ref, paged_kv, varlen_attention_ref, window_visible
from kernels.flash_attention import flash_attention, flash_attention_varlen
from kernels.flash_decode import flash_decode, paged_flash_decode
from kernels.tests.attention_cases import (DEVICE, ON_GPU, TOL, check_attention, gpu_only, needs_backend,
                                           poisoned_like, qkv, randn)
from model import masks
from parity.tolerance import compare

pytestmark = needs_backend
DTYPES = [torch.bfloat16, torch.float16]


def test_window_rule_matches_transformers():
    """attention_ref's and model.masks' window rule == transformers' sliding-window causal mask; the
    off-by-one neighbours (window - 1, window + 1) differ from it."""
    masking_utils = pytest.importorskip("transformers.masking_utils")
    for window in (1, 2, 5, 16):
        fn = masking_utils.sliding_window_causal_mask_function(window)
        for s_q, s_kv in ((9, 9), (3, 20), (1, 17)):
            pos = torch.arange(s_q) + s_kv - s_q
            zero = torch.tensor(0)
            hf = fn(zero, zero, pos[:, None], torch.arange(s_kv)[None, :]).expand(s_q, s_kv)
            assert torch.equal(window_visible(s_q, s_kv, window, "cpu"), hf), (window, s_q, s_kv)
            assert torch.equal(masks.visible_keys(torch.arange(s_kv), pos, window), hf), (window, s_q, s_kv)
            if s_kv > window + 1:  # the neighbours see a different set
                assert not torch.equal(window_visible(s_q, s_kv, window + 1, "cpu"), hf)
                assert not torch.equal(window_visible(s_q, s_kv, window - 1, "cpu"), hf) or window == 1


def _poison_below_window(k, v, s_q, window):
    """NaN into the keys no query of the last s_q positions sees (all j <= S_kv - s_q - window)."""
    dead = k.shape[-2] - s_q - window + 1  # keys [0, dead) are below every query's window
    if dead > 0:
        k[..., :dead, :] = float("nan")
        v[..., :dead, :] = float("nan")
    return max(dead, 0)


def _ref(q, k, v, window):
    return attention_ref(q.float(), k.nan_to_num(0).float(), v.nan_to_num(0).float(), causal=True, window=window)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 5, 16, 37, 100], ids=lambda w: f"w{w}")
@pytest.mark.parametrize("s_q", [37, 9], ids=lambda s: f"q{s}")
def test_flash_attention_window(dtype, window, s_q):
    """Prefill (s_q = S_kv = 37) and a chunk after a cached prefix (9 queries over 37 keys); windows
    below, at (37) and past (100) the sequence; GQA 4x2, D 64."""
    s_kv = 37
    q, k, v = qkv(1, 4, 2, s_q, s_kv, 64, dtype, seed=window + s_q)
    dead = _poison_below_window(k, v, s_q, window)
    want = _ref(q, k, v, window)
    got = flash_attention(q, k, v, causal=True, window=window, out=poisoned_like(q), use_tma=False)
    check_attention(got, want, dtype, f"flash_attention window={window} s_q={s_q} ({dead} keys NaN)")
    if window >= s_kv:  # a window covering everything is plain causal attention
        torch.testing.assert_close(got, flash_attention(q, k, v, causal=True, use_tma=False), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_window(dtype):
    """Packed sequences (prefill, chunk after a prefix, one token) with a window of 6, D 128; each
    sequence's keys below its window are NaN."""
    window, lens = 6, [(20, 20), (5, 33), (1, 12)]  # (new tokens, total keys) per sequence
    qs, ks, vs = [], [], []
    for i, (s_q, s_kv) in enumerate(lens):
        q, k, v = qkv(1, 4, 1, s_q, s_kv, 128, dtype, seed=10 * i)
        _poison_below_window(k, v, s_q, window)
        qs.append(q[0].transpose(0, 1))
        ks.append(k[0].transpose(0, 1))
        vs.append(v[0].transpose(0, 1))
    q, k, v = torch.cat(qs).contiguous(), torch.cat(ks).contiguous(), torch.cat(vs).contiguous()
    cu = lambda xs: torch.tensor([0] + list(torch.tensor(xs).cumsum(0)), dtype=torch.int32, device=DEVICE)  # noqa: E731
    cu_q, cu_k = cu([a for a, _ in lens]), cu([b for _, b in lens])
    want = varlen_attention_ref(q.float(), k.nan_to_num(0).float(), v.nan_to_num(0).float(), cu_q, cu_k,
                                causal=True, window=window)
    got = flash_attention_varlen(q, k, v, cu_q, cu_k, 20, 33, causal=True, window=window, out=poisoned_like(q))
    check_attention(got, want, dtype, "flash_attention_varlen window=6")


def _decode_case(dtype, window, seed, D=64):
    """q (4, 4, D), caches (4, 2, 70, D) with lengths 1, 37, 70, 16, NaN below each window and past
    each length; the windowed fp32 reference per sequence."""
    lens = [1, 37, 70, 16]
    q = randn(4, 4, D, dtype=dtype, seed=seed)
    k = randn(4, 2, 70, D, dtype=dtype, seed=seed + 1)
    v = randn(4, 2, 70, D, dtype=dtype, seed=seed + 2)
    want = torch.stack([_ref(q[b, None, :, None], k[b:b + 1, :, :n], v[b:b + 1, :, :n], window)[0, :, 0]
                        for b, n in enumerate(lens)])
    for b, n in enumerate(lens):
        k[b, :, :max(n - window, 0)] = float("nan")
        v[b, :, :max(n - window, 0)] = float("nan")
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    return q, k, v, torch.tensor(lens, dtype=torch.int32, device=DEVICE), want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 16, 37, 70, 200], ids=lambda w: f"w{w}")
@pytest.mark.parametrize("num_splits", [None, 3])
def test_flash_decode_window(dtype, window, num_splits):
    q, k, v, lens, want = _decode_case(dtype, window, seed=window)
    got = flash_decode(q, k, v, lens, window=window, num_splits=num_splits, out=poisoned_like(q))
    check_attention(got, want, dtype, f"flash_decode window={window} splits={num_splits}")


def _freed_blocks(k, v, lens, window, block_size, seed):
    """The cache paged into shuffled blocks; table entries wholly below each window point at a NaN
    block (as the engine's freed blocks point at the null block)."""
    k_pages, v_pages, table = paged_kv(k.nan_to_num(0), v.nan_to_num(0), block_size, seed, spare_blocks=1)
    spare = (set(range(k_pages.shape[0])) - set(table.reshape(-1).tolist())).pop()  # the NaN block no table names
    for b, n in enumerate(lens.tolist()):
        for p in range(table.shape[1]):
            if (p + 1) * block_size <= n - window or p * block_size >= n:
                table[b, p] = spare
    return k_pages, v_pages, table


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [5, 16, 37], ids=lambda w: f"w{w}")
def test_paged_decode_window(dtype, window):
    q, k, v, lens, want = _decode_case(dtype, window, seed=3 * window, D=128)
    k_pages, v_pages, table = _freed_blocks(k, v, lens, window, 16, seed=window)
    got = paged_flash_decode(q, k_pages, v_pages, table, lens, window=window, num_splits=2,
                             out=poisoned_like(q))
    check_attention(got, want, dtype, f"paged_flash_decode window={window} (blocks below it freed)")


def test_off_by_one_window_is_rejected():
    """The planted fault: each kernel with window + 1 (one key too many) fails the check that the
    correct window passes, so the bound resolves the off-by-one."""
    dtype, window = torch.float16, 5
    q, k, v = qkv(1, 4, 2, 9, 37, 64, dtype, seed=7)
    want = _ref(q, k, v, window)
    bad = flash_attention(q, k, v, causal=True, window=window + 1, use_tma=False)
    assert not compare(bad, want, TOL[dtype]).ok, "flash_attention: window + 1 passed the window check"
    check_attention(flash_attention(q, k, v, causal=True, window=window, use_tma=False), want, dtype)

    q, k, v, lens, want = _decode_case(dtype, 16, seed=11)
    k, v = k.nan_to_num(0), v.nan_to_num(0)  # the wider window reads one more key: a real one
    assert not compare(flash_decode(q, k, v, lens, window=17), want, TOL[dtype]).ok, "flash_decode: 17 passed"
    k_pages, v_pages, table = paged_kv(k, v, 16, seed=1)
    assert not compare(paged_flash_decode(q, k_pages, v_pages, table, lens, window=17), want, TOL[dtype]).ok


def test_window_argument_errors():
    q, k, v = qkv(1, 2, 2, 8, 8, 64, torch.float16, seed=0)
    with pytest.raises(ValueError, match="needs causal=True"):
        flash_attention(q, k, v, causal=False, window=4)
    with pytest.raises(ValueError, match="window must be"):
        flash_attention(q, k, v, causal=True, window=-1)


@gpu_only
@pytest.mark.parametrize("window", [256, 1000, 4096], ids=lambda w: f"w{w}")
def test_flash_attention_window_large(window):
    """Autotuned tiles (S 2048 > the small-shape config), TMA on Hopper (the pointer path is the
    small cases'): keys are real everywhere here (a TMA tile straddling the window edge loads then
    masks them). bf16 only: each dtype or path is one more autotuning (~30 s)."""
    use_tma = None
    dtype = torch.bfloat16
    q, k, v = qkv(2, 8, 2, 2048, 2048, 128, dtype, seed=window)
    want = attention_ref(q, k, v, causal=True, window=window)
    check_attention(flash_attention(q, k, v, causal=True, window=window, use_tma=use_tma), want, dtype,
                    f"flash_attention S=2048 window={window}")


@gpu_only
def test_paged_decode_window_large():
    """Autotuned decode over 4096-token sequences, window 1024, freed blocks below the window (bf16)."""
    dtype = torch.bfloat16
    B, window, bs = 8, 1024, 16
    lens = torch.tensor([4096, 3001, 1024, 77, 1, 2048, 4000, 1500], dtype=torch.int32, device=DEVICE)
    q = randn(B, 32, 128, dtype=dtype, seed=1)
    k = randn(B, 8, 4096, 128, dtype=dtype, seed=2)
    v = randn(B, 8, 4096, 128, dtype=dtype, seed=3)
    want = torch.stack([_ref(q[b, None, :, None], k[b:b + 1, :, :n], v[b:b + 1, :, :n], window)[0, :, 0]
                        for b, n in enumerate(lens.tolist())])
    k_pages, v_pages, table = _freed_blocks(k, v, lens, window, bs, seed=0)
    got = paged_flash_decode(q, k_pages, v_pages, table, lens, window=window, max_seq_len=4096)
    check_attention(got, want, dtype, "paged_flash_decode B=8 L<=4096 window=1024")
    assert ON_GPU


def _time_us(fn, iters: int = 30) -> float:
    """Device time of one fn() call, replayed from a CUDA graph of `iters` calls: eager calls are
    launch-bound (~100-150 us of host each on the H200), which hid the cost of reading 4K tokens."""
    from decoding.cuda_graph import capture_graph

    graph, _ = capture_graph(lambda: [fn() for _ in range(iters)], DEVICE, warmup=1)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


@gpu_only
def test_paged_decode_window_cost_is_o_window():
    """Decode with window 512 over 4,096 and 32,768 cached tokens (B 8, 32/8 heads, bf16): the same
    cost within 1.5x (reading all 32K tokens would be ~8x), while the full-cache decode grows; each
    windowed output equals the no-window kernel over the last 512 tokens alone (checked before timing)."""
    dtype, B, hq, hkv, d, bs, window = torch.bfloat16, 8, 32, 8, 128, 16, 512
    times = {}
    for L in (4096, 32768):
        q = randn(B, hq, d, dtype=dtype, seed=L)
        k = randn(B * L // bs, bs, hkv, d, dtype=dtype, seed=L + 1)
        v = randn(B * L // bs, bs, hkv, d, dtype=dtype, seed=L + 2)
        table = torch.arange(B * L // bs, dtype=torch.int32, device=DEVICE).reshape(B, L // bs)
        lens = torch.full((B,), L, dtype=torch.int32, device=DEVICE)
        got = paged_flash_decode(q, k, v, table, lens, window=window)
        # The table is the identity: sequence b's token j is row b * L + j of the flattened pool.
        k_tail, v_tail = (t.reshape(B, L, hkv, d)[:, L - window:].transpose(1, 2).float() for t in (k, v))
        want = attention_ref(q[:, :, None].float(), k_tail, v_tail)[:, :, 0]
        check_attention(got, want, dtype, f"window {window} of {L} tokens vs the last {window} alone")
        times[L] = (_time_us(lambda: paged_flash_decode(q, k, v, table, lens, window=window)),
                    _time_us(lambda: paged_flash_decode(q, k, v, table, lens)))
        print(f"paged decode B={B} L={L}: window {window} {times[L][0]:.1f} us, full {times[L][1]:.1f} us")
    windowed, full = times[32768][0] / times[4096][0], times[32768][1] / times[4096][1]
    assert full >= 3, f"the full decode should grow with L (x{full:.2f}); the timing cannot tell: {times}"
    assert windowed <= 1.5, f"windowed decode grew x{windowed:.2f} from 4K to 32K tokens: not O(window); {times}"
