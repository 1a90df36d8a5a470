"""flash_decode: split-KV ("flash-decoding") attention for one query token per sequence.

Math, for sequence b and query head h with kv head g = h // (Hq // Hkv), over the
L = seq_lens[b] cached tokens:

    O[b, h] = sum_{j < L} softmax_j(sm_scale * <q[b, h], k[b, g, j]>) v[b, g, j]

Decode is memory-bound (each K/V byte is used by Hq/Hkv query heads only), so the work
is split two ways to keep every SM streaming:

  phase 1, grid (B, Hkv, num_splits): program (b, g, s) reads its contiguous slice of
    tokens [s * chunk, (s + 1) * chunk) of sequence b once, for ALL Hq/Hkv query heads of
    group g at once (the heads form the M dimension of a tensor-core tile, padded to
    BLOCK_H >= 16), and writes the slice's normalized partial output and its log-sum-exp
    (log2 domain):  O_s = sum_j 2^(t_j - lse_s) v_j,   lse_s = log2 sum_j 2^(t_j),
    t_j = sm_scale * log2(e) * <q, k_j>.  An empty slice writes lse_s = -inf, O_s = 0.
  phase 2, grid (B, Hq): O = sum_s 2^(lse_s - M) O_s / sum_s 2^(lse_s - M),  M = max_s lse_s
    (0 when the sequence is empty).

chunk = cdiv(cdiv(L, num_splits), BLOCK_N) * BLOCK_N, so splits stay tile-aligned and a
short sequence simply leaves its last splits empty. num_splits is chosen on the host from
(B, Hkv, max KV length, SM count) without a device sync; see choose_num_splits.

Two caches share the kernels (PAGED is a compile-time switch):
  contiguous  k_cache[b, g, j, :]                                   (B, Hkv, S_max, D)
  paged       k_cache[block_table[b, j // bs], j % bs, g, :]        (num_blocks, bs, Hkv, D)

Sliding window (`window=`, Mistral): the splits divide only the last `window` tokens
[max(L - window, 0), L), so earlier tokens (and, paged, their blocks) are never read and a
step costs O(window); num_splits is chosen for min(max KV length, window).

Reference: kernels/attention_ref.py (attention_ref, paged_decode_ref).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kernels._triton import launch_tuned, tune_bench
from kernels.flash_attention import (LOG2E, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, device_guard,
                                     device_problem, interpret_upcast, interpreting, tile_dot, window_arg)

MIN_TOKENS_PER_SPLIT = 128  # below this a split's fixed cost (q load, partial write) dominates
MAX_SPLITS = 64
_INTERPRET_META = dict(BLOCK_N=16, num_warps=4, num_stages=1)
_SMALL_KV = 256  # caches this short skip autotuning and use _SMALL_META
_SMALL_META = dict(BLOCK_N=32, num_warps=4, num_stages=2)
_SMEM_BUDGET_BYTES = 227 * 1024
_NO_WINDOW = 1 << 30  # the kernel's window when there is none: longer than any cache

DECODE_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3, 4)
]


def _prune(configs, named_args, **kwargs):
    d = named_args.get("HEAD_DIM", kwargs.get("HEAD_DIM"))
    kept = [c for c in configs if c.num_stages * 2 * c.kwargs["BLOCK_N"] * d * 2 <= _SMEM_BUDGET_BYTES]
    return kept or configs[:1]


# --------------------------------------------------------------------------- kernels


# Key-only ints (and the window) are not specialized on: Triton compiles an int argument apart
# when it is 1 or a multiple of 16, so a new key would recompile every config.
@triton.jit(do_not_specialize=["window", "KV_BUCKET", "WORK_BUCKET"])
def _decode_split_kernel(Q, K, V, seq_lens, block_table, O_part, LSE_part,
                         stride_qb, stride_qh,
                         stride_kblk, stride_ktok, stride_kh,
                         stride_vblk, stride_vtok, stride_vh,
                         stride_bt,
                         stride_pb, stride_ph, stride_ps,
                         qk_scale, num_splits, window,
                         KV_BUCKET, WORK_BUCKET,  # autotune key only
                         GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr,
                         PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, UPCAST: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Phase 1. Grid (B, Hkv, num_splits). K/V token j of sequence b lives at
    blk * stride_kblk + tok * stride_ktok + g * stride_kh with (blk, tok) = (b, j) for the
    contiguous cache and (block_table[b, j // PAGE_SIZE], j % PAGE_SIZE) for the paged one."""
    b = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + b)
    # Sliding window: the query at position seq_len - 1 sees the last `window` tokens (no window:
    # the host passes 2^30); the splits divide only those, so earlier tokens are never loaded.
    first = tl.maximum(seq_len - window, 0)
    chunk = tl.cdiv(tl.cdiv(seq_len - first, num_splits), BLOCK_N) * BLOCK_N
    lo = first + split * chunk
    hi = tl.minimum(lo + chunk, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = g * GROUP + offs_h
    head_ok = offs_h < GROUP
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=head_ok[:, None], other=0.0)  # (BLOCK_H, D)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for start in tl.range(lo, hi, BLOCK_N):
        tok = start + offs_n
        tok_ok = tok < hi
        if PAGED:
            blk = tl.load(block_table + b.to(tl.int64) * stride_bt + tok // PAGE_SIZE, mask=tok_ok, other=0)
            blk = blk.to(tl.int64)
            pos = tok % PAGE_SIZE
        else:
            blk = b.to(tl.int64)
            pos = tok
        k_rows = blk * stride_kblk + pos * stride_ktok + g * stride_kh  # (BLOCK_N,)
        v_rows = blk * stride_vblk + pos * stride_vtok + g * stride_vh
        k = tl.load(K + k_rows[:, None] + offs_d[None, :], mask=tok_ok[:, None], other=0.0)  # (BLOCK_N, D)
        v = tl.load(V + v_rows[:, None] + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
        t = tile_dot(q, tl.trans(k), None, UPCAST) * qk_scale  # (BLOCK_H, BLOCK_N) fp32, log2 units
        t = tl.where(tok_ok[None, :], t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, 1))  # finite: every tile holds >= 1 valid token
        p = tl.math.exp2(t - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tile_dot(p.to(v.dtype), v, acc * alpha[:, None], UPCAST)
        m_i = m_new

    empty = l_i == 0.0
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    part = b.to(tl.int64) * stride_pb + heads * stride_ph + split * stride_ps  # (BLOCK_H,)
    tl.store(O_part + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=head_ok[:, None])
    tl.store(LSE_part + part, lse, mask=head_ok)


@triton.jit
def _decode_reduce_kernel(O_part, LSE_part, Out, stride_pb, stride_ph, stride_ob, stride_oh, num_splits,
                          HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """Phase 2. Grid (B, Hq): merge the splits' (O_s, lse_s) into Out[b, h]."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < num_splits
    part = b.to(tl.int64) * stride_pb + h * stride_ph + offs_s  # (BLOCK_S,); splits are the inner dim
    lse = tl.load(LSE_part + part, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # (BLOCK_S,), 0 for empty splits
    o = tl.load(O_part + part[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    denom = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(denom == 0.0, 1.0, denom)  # (D,); empty sequence -> 0
    tl.store(Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty))


_decode_split_tuned = triton.autotune(
    DECODE_CONFIGS, key=["KV_BUCKET", "WORK_BUCKET", "HEAD_DIM", "BLOCK_H", "PAGED", "PAGE_SIZE"],
    prune_configs_by={"early_config_prune": _prune}, do_bench=tune_bench)(_decode_split_kernel)

# Configs the autotuner picked, by its key (+ dtype and device): later calls launch the kernel with
# the config directly. Triton's autotuner dispatch costs ~40 us of host time per call on an H200
# (torch 2.11, Triton 3.6: an eager flash_decode call 170 us against 132 us with a fixed config),
# which every layer of an eager (mixed) engine step pays.
_TUNED: dict[tuple, dict] = {}


def _work_bucket(programs: int, num_sms: int = 132) -> int:
    """Autotune key for the grid size B * Hkv * splits, in three classes: under one wave, a few
    waves, many waves (a config good for 8 programs is not the one for 512). Power-of-two keys
    gave an engine's eager steps, whose decode batch varies step to step, a new key (a fresh
    autotune of every config, seconds) every few steps."""
    return 1 if programs <= num_sms else 4 if programs <= 4 * num_sms else 16


# --------------------------------------------------------------------------- host side


@functools.lru_cache(maxsize=4096)
def choose_num_splits(batch: int, num_kv_heads: int, max_kv_len: int, num_sms: int = 132,
                      programs_per_sm: int = 2) -> int:
    """Splits per (sequence, kv head) so phase 1 fills the GPU in as few, even waves as possible.

    Cost model: time ~ waves * tokens_per_split / min(1, programs / num_sms),
    programs = B * Hkv * s, waves = cdiv(programs, num_sms * programs_per_sm),
    plus a small per-split term for phase 2; s is capped so a split keeps >= MIN_TOKENS_PER_SPLIT
    tokens, and the fewest splits within 10% of the cheapest win.
    E.g. B=8, Hkv=8, L=4096 on 132 SMs -> 4 splits (256 programs, one wave).
    """
    work = max(batch * num_kv_heads, 1)
    slots = max(num_sms * programs_per_sm, 1)
    cap = max(1, min(MAX_SPLITS, triton.cdiv(max(max_kv_len, 1), MIN_TOKENS_PER_SPLIT)))
    # An underfilled single wave also loses bandwidth: scale by the fraction of SMs left idle.
    costs = [triton.cdiv(work * s, slots) * triton.cdiv(max_kv_len, s) / min(1.0, work * s / num_sms) + 8 * s
             for s in range(1, cap + 1)]
    # Fewest splits within 10% of the best: past a few waves, quantization gains are noise.
    best = next(s for s, c in enumerate(costs, start=1) if c <= 1.1 * min(costs))
    if work >= num_sms:
        # A serving batch (a wave of (sequence, head) programs or more): lengths differ, and the
        # model above (every sequence max_kv_len long) leaves the longest ones a program each, which
        # the step then waits on. Keep >= 4 programs per SM. H200, B=64, Hkv=8, lognormal lengths
        # (mean 474, max 1500; paged, bf16): 1 split 59.1 us, 2 splits 50.4 us, 4 52.8, 8 59.2
        # (`python3 -m bench.decode_mix` measures this table).
        best = max(best, min(cap, -(-4 * num_sms // work)))
    return best


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(t: torch.Tensor) -> int:
    return _sm_count(t.device.index if t.device.index is not None else torch.cuda.current_device()) \
        if t.is_cuda else 132


def _check(name: str, q, k_cache, v_cache, seq_lens, out, extra: dict) -> list[str]:
    tensors = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "seq_lens": seq_lens} | extra
    if out is not None:
        tensors["out"] = out
    problems = []
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        return [f"expected q (B, Hq, D) and k_cache = v_cache 4-D, got q {tuple(q.shape)}, "
                f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"]
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        problems.append(f"q/k_cache/v_cache must share one dtype of fp16/bf16, got {q.dtype}, "
                        f"{k_cache.dtype}, {v_cache.dtype}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS or k_cache.shape[-1] != q.shape[-1]:
        problems.append(f"head dim must be one of {SUPPORTED_HEAD_DIMS} and equal for q and the cache, "
                        f"got {q.shape[-1]} and {k_cache.shape[-1]}")
    if seq_lens.dtype != torch.int32 or tuple(seq_lens.shape) != (q.shape[0],):
        problems.append(f"seq_lens must be int32 of shape ({q.shape[0]},), "
                        f"got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        problems.append(f"out must match q: {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    not_contig = [n for n in ("q", "k_cache", "v_cache", "out") if n in tensors and tensors[n].stride(-1) != 1]
    if not_contig:
        problems.append(f"the last (head) dim must be contiguous in {not_contig}")
    return problems + device_problem(name, tensors)


def _run(q, k_cache, v_cache, seq_lens, block_table, out, sm_scale, num_splits, max_kv_len,
         num_kv_heads, kv_strides, paged, page_size, window):
    B, Hq, D = q.shape
    group = Hq // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    if window:  # a step reads at most `window` tokens per sequence: split (and tune) for that
        max_kv_len = min(max_kv_len, window)
    if num_splits is None:
        num_splits = choose_num_splits(B, num_kv_heads, max_kv_len, _num_sms(q))
    num_splits = max(1, int(num_splits))
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    # Partials: (B, Hq, num_splits, D) fp32 and (B, Hq, num_splits) fp32, contiguous, fully
    # written by phase 1 (empty splits included).
    o_part = torch.empty(B, Hq, num_splits, D, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(B, Hq, num_splits, device=q.device, dtype=torch.float32)
    bt = block_table if paged else seq_lens  # unused pointer when not paged
    kv_bucket = triton.next_power_of_2(max(max_kv_len, 1))
    work_bucket = _work_bucket(B * num_kv_heads * num_splits, _num_sms(q))
    args = (q, k_cache, v_cache, seq_lens, bt, o_part, lse_part,
            q.stride(0), q.stride(1), *kv_strides, bt.stride(0) if paged else 0,
            Hq * num_splits, num_splits, 1,  # (b, h, s) strides of lse_part, in elements
            scale * LOG2E, num_splits, window or _NO_WINDOW, kv_bucket, work_bucket)
    consts = dict(GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_DIM=D,
                  PAGED=paged, PAGE_SIZE=page_size, UPCAST=interpret_upcast(q))
    with device_guard(q):
        grid = (B, num_kv_heads, num_splits)
        fixed = _INTERPRET_META if interpreting() else (_SMALL_META if max_kv_len <= _SMALL_KV else None)
        if fixed:
            _decode_split_kernel[grid](*args, **consts, **fixed)
        else:
            key = (kv_bucket, work_bucket, D, consts["BLOCK_H"], paged, page_size, q.dtype, q.device)
            launch_tuned(_decode_split_tuned, _TUNED, key, grid, args, consts)
        _decode_reduce_kernel[(B, Hq)](o_part, lse_part, out, Hq * num_splits, num_splits,
                                       out.stride(0), out.stride(1), num_splits,
                                       HEAD_DIM=D, BLOCK_S=triton.next_power_of_2(num_splits))
    return out


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                 sm_scale: float | None = None, *, out: torch.Tensor | None = None,
                 num_splits: int | None = None, max_seq_len: int | None = None,
                 window: int | None = None) -> torch.Tensor:
    """One decode step over a contiguous per-sequence KV cache (split-KV, two launches).

    q:        (B, Hq, D) fp16/bf16, D in {64, 128}; the new token's query per sequence.
    k_cache:  (B, Hkv, S_max, D), same dtype, Hq % Hkv == 0; any strides with stride(-1) == 1.
    v_cache:  (B, Hkv, S_max, D), like k_cache.
    seq_lens: (B,) int32 on q's device; seq_lens[b] <= S_max valid tokens (new token included).
              Tokens at positions >= seq_lens[b] are never read. 0 gives an output of 0.
    out:      optional (B, Hq, D) buffer to fill. num_splits: override the heuristic.
    max_seq_len: host bound on seq_lens (default S_max); only steers num_splits.
    window:   sliding window (None/0 = none): only the last `window` tokens (positions
              > seq_lens[b] - 1 - window) are read; earlier ones are never loaded.
    Returns (B, Hq, D): softmax(sm_scale * q k^T) v per (sequence, head).
    """
    win = window_arg("flash_decode", window)
    problems = _check("flash_decode", q, k_cache, v_cache, seq_lens, out, {})
    if not problems:
        if k_cache.shape[0] != q.shape[0] or k_cache.shape[1] == 0 or q.shape[1] % k_cache.shape[1]:
            problems.append(f"k_cache must be (B={q.shape[0]}, Hkv, S_max, D) with Hq={q.shape[1]} a "
                            f"multiple of Hkv, got {tuple(k_cache.shape)}")
    if problems:
        raise ValueError("flash_decode: " + "; ".join(problems))
    hkv, s_max = k_cache.shape[1], k_cache.shape[2]
    # (blk, tok, head) strides: blk = batch index, tok = position.
    kv_strides = (k_cache.stride(0), k_cache.stride(2), k_cache.stride(1),
                  v_cache.stride(0), v_cache.stride(2), v_cache.stride(1))
    return _run(q, k_cache, v_cache, seq_lens, None, out, sm_scale, num_splits,
                s_max if max_seq_len is None else max_seq_len, hkv, kv_strides, False, 1, win)


def paged_flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       block_table: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float | None = None, *,
                       out: torch.Tensor | None = None, num_splits: int | None = None,
                       max_seq_len: int | None = None, window: int | None = None) -> torch.Tensor:
    """One decode step over a paged KV cache addressed by block tables (vLLM layout).

    q:           (B, Hq, D) fp16/bf16, D in {64, 128}.
    k_cache:     (num_blocks, block_size, Hkv, D), same dtype, Hq % Hkv == 0, stride(-1) == 1.
    v_cache:     (num_blocks, block_size, Hkv, D), like k_cache.
    block_table: (B, max_blocks) int32 on q's device; block_table[b, p] is the physical block
                 holding tokens p*block_size .. (p+1)*block_size - 1 of sequence b. Entries at
                 p >= cdiv(seq_lens[b], block_size) are never read (may be garbage).
    seq_lens:    (B,) int32 on q's device, 0 <= seq_lens[b] <= max_blocks * block_size.
    out:         optional (B, Hq, D) buffer to fill. num_splits: override the heuristic.
    max_seq_len: host bound on seq_lens (default max_blocks * block_size); only steers num_splits.
    window:      sliding window (None/0 = none): only the last `window` tokens are read, so block
                 table entries wholly before them are never read either (may be the null block).
    Returns (B, Hq, D).
    """
    win = window_arg("paged_flash_decode", window)
    problems = _check("paged_flash_decode", q, k_cache, v_cache, seq_lens, out, {"block_table": block_table})
    if not problems:
        if k_cache.shape[2] == 0 or q.shape[1] % k_cache.shape[2]:
            problems.append(f"k_cache must be (num_blocks, block_size, Hkv, D) with Hq={q.shape[1]} a multiple "
                            f"of Hkv, got {tuple(k_cache.shape)}")
        if block_table.dtype != torch.int32 or block_table.dim() != 2 or block_table.shape[0] != q.shape[0]:
            problems.append(f"block_table must be int32 (B={q.shape[0]}, max_blocks), got {block_table.dtype} "
                            f"{tuple(block_table.shape)}")
        elif block_table.stride(1) != 1:
            problems.append("block_table rows must be contiguous (stride(1) == 1)")
    if problems:
        raise ValueError("paged_flash_decode: " + "; ".join(problems))
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    kv_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                  v_cache.stride(0), v_cache.stride(1), v_cache.stride(2))
    bound = block_table.shape[1] * block_size if max_seq_len is None else max_seq_len
    return _run(q, k_cache, v_cache, seq_lens, block_table, out, sm_scale, num_splits, bound, hkv,
                kv_strides, True, block_size, win)


def tune_paged_decode(k_cache: torch.Tensor, v_cache: torch.Tensor, num_q_heads: int, max_batch: int,
                      max_blocks: int, window: int | None = None, seq_len: int | None = None) -> int:
    """Autotune paged_flash_decode now for every key that 1..max_batch decodes over block tables
    of 1..max_blocks entries can reach (an engine's eager steps: the table width and decode count
    change step to step), so no serving step pays a tune. Returns the number of keys tuned.

    Each key runs once on a representative (batch, width): distinct real blocks of the cache (not
    the null block over and over, which L2 would serve), `seq_len` tokens each (default a quarter
    of the width's tokens). A no-op under the interpreter and off CUDA."""
    if interpreting() or not k_cache.is_cuda:
        return 0
    num_blocks, block_size, hkv, d = k_cache.shape
    sms = _num_sms(k_cache)
    reps: dict[tuple, list[tuple[int, int]]] = {}
    for width in range(1, max_blocks + 1):
        bound = width * block_size
        max_kv = min(bound, window) if window else bound
        if max_kv <= _SMALL_KV:
            continue
        for b in range(1, max_batch + 1):
            splits = choose_num_splits(b, hkv, max_kv, sms)
            key = (triton.next_power_of_2(max_kv), _work_bucket(b * hkv * splits, sms))
            reps.setdefault(key, []).append((b, width))
    group = num_q_heads // hkv
    tuned = 0
    for (kv_bucket, work), cases in reps.items():
        full = (kv_bucket, work, d, max(16, triton.next_power_of_2(group)), True, block_size, k_cache.dtype,
                k_cache.device)
        if full in _TUNED:
            continue
        b, width = cases[len(cases) // 2]
        ids = torch.arange(b * width, device=k_cache.device) % max(num_blocks - 1, 1) + 1  # block 0: the null one
        table = ids.view(b, width).to(torch.int32)
        lens = torch.full((b,), max(1, seq_len or width * block_size // 4), dtype=torch.int32, device=k_cache.device)
        q = torch.randn(b, num_q_heads, d, device=k_cache.device, dtype=k_cache.dtype)
        paged_flash_decode(q, k_cache, v_cache, table, lens.clamp_(max=width * block_size), window=window)
        tuned += 1
    return tuned
