"""The paged decode kernel's paths against the fp32 reference: the balanced split policy (many
empty splits, as under a CUDA graph's padded tables), the hand-prefetched loop (PREFETCH=1), the
direct write of one split (no phase 2), the even policy; plus planted faults the tolerance catches.

    TRITON_INTERPRET=1 python -m pytest -q kernels/tests/test_flash_decode_paths.py   # CPU
    python -m pytest -q kernels/tests/test_flash_decode_paths.py                      # GPU: + every config

Tolerance: attention_cases.TOL (per element atol + rtol * |ref|; fp16 5e-4 + 2e-3, bf16 8e-3 +
1.6e-2), the one every flash kernel meets; the split merge is fp32. The planted faults below (a
page index off by one, one split's lse dropped, a sequence's last token skipped) each break it.
"""

import pytest
import torch

from kernels.tests.attention_cases import DEVICE, TOL, check_attention, gpu_only, needs_backend, poisoned_like, randn

from kernels import flash_decode as fd
from kernels.attention_ref import paged_decode_ref, paged_kv
from parity.tolerance import compare

pytestmark = needs_backend

LENS = [1, 37, 80, 50, 16]  # 1 token, mid-page, longest, ..., exactly one page
PREFETCH = dict(BLOCK_N=32, PREFETCH=1, num_warps=4, num_stages=1)
PREFETCH2 = dict(BLOCK_N=16, PREFETCH=2, num_warps=4, num_stages=1)
PIPELINED = dict(BLOCK_N=32, PREFETCH=0, num_warps=4, num_stages=2)


def _case(dtype, lens=LENS, width=None, block_size=16, heads=(8, 2), D=64, seed=0):
    """q, paged K/V (3 NaN spare blocks), a table padded to `width` blocks with a NaN block's id
    (never to be read), seq_lens, and the fp32 reference."""
    Hq, Hkv = heads
    B, S = len(lens), max(lens)
    q = randn(B, Hq, D, dtype=dtype, seed=seed + 1)
    k = randn(B, Hkv, S, D, dtype=dtype, seed=seed + 2)
    v = randn(B, Hkv, S, D, dtype=dtype, seed=seed + 3)
    k_pages, v_pages, table = paged_kv(k, v, block_size, seed, spare_blocks=3)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    want = paged_decode_ref(q.float(), k_pages.float(), v_pages.float(), table, seq_lens)
    if width is not None and width > table.shape[1]:
        nan_block = min(set(range(k_pages.shape[0])) - set(table.flatten().tolist()))  # a spare block
        assert k_pages[nan_block].isnan().all()
        pad = torch.full((B, width - table.shape[1]), nan_block, dtype=torch.int32, device=DEVICE)
        table = torch.cat([table, pad], 1)
    return q, k_pages, v_pages, table, seq_lens, want


@pytest.mark.parametrize("config", [PREFETCH, PIPELINED], ids=["prefetch", "pipelined"])
@pytest.mark.parametrize("dtype, policy", [
    (torch.float16, dict(split_tokens=32)), (torch.bfloat16, dict(split_tokens=32)),
    (torch.float16, dict(num_splits=1)), (torch.float16, dict(num_splits=3))],
    ids=["balanced32-fp16", "balanced32-bf16", "direct-fp16", "even3-fp16"])
def test_paths_match_reference(dtype, policy, config):
    # Table padded to 12 blocks (192 tokens) of which <= 5 are real: under balanced32 that is 6 splits
    # for every sequence, most of them empty, as under the engine's graph-padded tables.
    q, kp, vp, table, lens, want = _case(dtype, width=12)
    got = fd.paged_flash_decode(q, kp, vp, table, lens, out=poisoned_like(q), config=config, **policy)
    check_attention(got, want, dtype, f"paged decode {config} {policy}")


@pytest.mark.parametrize("policy", [dict(split_tokens=32), dict(num_splits=1)], ids=["balanced32", "direct"])
def test_two_tiles_ahead(policy):
    q, kp, vp, table, lens, want = _case(torch.float16, width=12)
    got = fd.paged_flash_decode(q, kp, vp, table, lens, out=poisoned_like(q), config=PREFETCH2, **policy)
    check_attention(got, want, torch.float16, f"paged decode {PREFETCH2} {policy}")


@pytest.mark.parametrize("config", [PREFETCH, PREFETCH2, PIPELINED], ids=["prefetch", "prefetch2", "pipelined"])
def test_window_balanced(config):
    from kernels.attention_ref import attention_ref

    dtype, window = torch.float16, 20
    q, kp, vp, table, lens, _ = _case(dtype, width=8)
    rows = []  # reference: each sequence's last `window` tokens
    for b, n in enumerate(lens.tolist()):
        idx = torch.arange(max(n - window, 0), n, device=DEVICE)
        pages = table[b, idx // kp.shape[1]].long()
        k = kp[pages, idx % kp.shape[1]].permute(1, 0, 2)[None].float()  # (1, Hkv, n', D)
        v = vp[pages, idx % kp.shape[1]].permute(1, 0, 2)[None].float()
        rows.append(attention_ref(q[b, None, :, None].float(), k, v)[0, :, 0])
    want = torch.stack(rows)
    got = fd.paged_flash_decode(q, kp, vp, table, lens, window=window, split_tokens=16, config=config)
    check_attention(got, want, dtype, f"paged decode window={window} balanced16 {config}")


def test_split_plan():
    # A serving batch (B * Hkv >= SMs): balanced chunks that cover the bound, at most MAX_SPLITS.
    assert fd.split_plan(64, 8, 1500, 132) == (-(-1500 // fd.SPLIT_TOKENS), fd.SPLIT_TOKENS)
    assert fd.split_plan(64, 8, 4096, 132) == (4096 // fd.SPLIT_TOKENS, fd.SPLIT_TOKENS)
    splits, chunk = fd.split_plan(64, 8, 1 << 17, 132)
    assert splits <= fd.MAX_BALANCED_SPLITS and splits * chunk >= 1 << 17 and chunk % 16 == 0
    # Small batches keep the even policy (the v1 heuristic), and so does an explicit num_splits.
    assert fd.split_plan(8, 8, 4096, 132) == (fd.choose_num_splits(8, 8, 4096, 132), 0)
    assert fd.split_plan(64, 8, 4096, 132, num_splits=3) == (3, 0)
    assert fd.split_plan(64, 8, 200, 132) == (fd.choose_num_splits(64, 8, 200, 132), 0)  # one chunk's worth
    assert fd.split_plan(1, 8, 100, 132, split_tokens=40) == (3, 48)  # rounded up to 16


# ----------------------------------------------------------------------------- planted faults


def test_planted_page_off_by_one_fails():
    dtype = torch.float16
    q, kp, vp, table, lens, want = _case(dtype)
    bad = table.clone()
    bad[2, 3] = table[2, 4]  # sequence 2 (80 tokens) reads its 5th page in place of its 4th
    got = fd.paged_flash_decode(q, kp, vp, bad, lens, split_tokens=32, config=PREFETCH)
    assert not compare(got, want, TOL[dtype]).ok, "a page index off by one passed the tolerance"


def test_planted_dropped_split_fails(monkeypatch):
    dtype = torch.float16
    q, kp, vp, table, lens, want = _case(dtype)
    real = fd._decode_reduce_kernel

    class DropSplit1:  # the planted fault: phase 2 never sees split 1 (its lse forced to -inf)
        def __getitem__(self, grid):
            def launch(o_part, lse_part, *args, **kw):
                lse_part[:, :, 1] = float("-inf")
                return real[grid](o_part, lse_part, *args, **kw)
            return launch

    monkeypatch.setattr(fd, "_decode_reduce_kernel", DropSplit1())
    got = fd.paged_flash_decode(q, kp, vp, table, lens, split_tokens=32, config=PREFETCH)
    assert not compare(got, want, TOL[dtype]).ok, "dropping a split's lse passed the tolerance"


def test_empty_splits_partials_never_read(monkeypatch):
    # Phase 1 writes no O row for an empty split; phase 2 must not read one: poison them with NaN.
    dtype = torch.float16
    q, kp, vp, table, lens, want = _case(dtype, width=12)
    real = fd._decode_reduce_kernel

    class Poison:
        def __getitem__(self, grid):
            def launch(o_part, lse_part, *args, **kw):
                o_part[lse_part == float("-inf")] = float("nan")
                return real[grid](o_part, lse_part, *args, **kw)
            return launch

    monkeypatch.setattr(fd, "_decode_reduce_kernel", Poison())
    got = fd.paged_flash_decode(q, kp, vp, table, lens, split_tokens=32, config=PREFETCH)
    check_attention(got, want, dtype, "balanced32 with NaN in the empty splits' partials")


def test_planted_last_token_skipped_fails():
    dtype = torch.bfloat16
    q, kp, vp, table, lens, want = _case(dtype)
    got = fd.paged_flash_decode(q, kp, vp, table, (lens - 1).clamp(min=1), split_tokens=32, config=PREFETCH)
    assert not compare(got, want, TOL[dtype]).ok, "skipping each sequence's last token passed the tolerance"


# ----------------------------------------------------------------------------- GPU only


@gpu_only
@pytest.mark.parametrize("policy", [dict(), dict(split_tokens=0), dict(split_tokens=128), dict(split_tokens=512)],
                         ids=["default", "even", "balanced128", "balanced512"])
def test_gpu_every_config_llama_shape(policy):
    """Llama-3-8B heads (32 / 8, D 128), bf16, 64 sequences of mixed lengths in a table padded to
    256 blocks (the engine's graph width): every DECODE_CONFIGS entry (the autotuner's candidates)."""
    g = torch.Generator().manual_seed(3)
    lens = torch.exp(torch.randn(64, generator=g) * 0.6 + 5.94).round().clamp(40, 1500).int().tolist()
    q, kp, vp, table, seq_lens, want = _case(torch.bfloat16, lens=lens, width=256, heads=(32, 8), D=128, seed=7)
    for c in fd.DECODE_CONFIGS:
        config = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        got = fd.paged_flash_decode(q, kp, vp, table, seq_lens, out=poisoned_like(q), config=config, **policy)
        check_attention(got, want, torch.bfloat16, f"B=64 graph-padded {config} {policy}")
    got = fd.paged_flash_decode(q, kp, vp, table, seq_lens, **policy)  # the tuned pick
    check_attention(got, want, torch.bfloat16, f"B=64 graph-padded tuned {policy}")


@gpu_only
def test_gpu_start_up_tuning_covers_balanced_keys():
    """tune_paged_decode tunes every key the balanced policy's serving batches reach (B * Hkv >= SMs),
    so no step meets a new key: after it, decodes of any batch and table width add none."""
    Hkv, D, bs = 8, 128, 16
    k = randn(2048, bs, Hkv, D, dtype=torch.bfloat16, seed=31)
    v = randn(2048, bs, Hkv, D, dtype=torch.bfloat16, seed=32)
    fd._TUNED.clear()
    assert fd.tune_paged_decode(k, v, 32, max_batch=40, max_blocks=40) > 0
    tuned = set(fd._TUNED)
    for b, width in ((17, 40), (40, 40), (33, 21), (3, 40), (40, 17)):
        splits, chunk = fd.split_plan(b, Hkv, width * bs, fd._num_sms(k))
        table = (torch.arange(b * width, device=DEVICE) % 2047 + 1).view(b, width).to(torch.int32)
        lens = torch.full((b,), width * bs - 5, dtype=torch.int32, device=DEVICE)
        fd.paged_flash_decode(randn(b, 32, D, dtype=torch.bfloat16, seed=b), k, v, table, lens)
        assert set(fd._TUNED) == tuned, f"B={b} width={width} ({splits} splits of {chunk}) met a new key"
    fd._TUNED.clear()  # the planted fault: no start-up tuning; the same check sees the key appear
    fd.paged_flash_decode(randn(17, 32, D, dtype=torch.bfloat16, seed=17), k, v, table[:1].expand(17, -1).contiguous(),
                          lens[:1].expand(17).contiguous())
    assert fd._TUNED, "a decode without start-up tuning met no new key: the check above could not fail"
