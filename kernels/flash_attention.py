"""flash_attention: FlashAttention-2 style forward pass in Triton (prefill / varlen prefill).

Math, for one (batch, query head h), with kv head g = h // (Hq // Hkv) (GQA without
expanding K/V) and causal offset c = S_kv - S_q (bottom-right alignment, as flash-attn):

    O[i] = sum_j softmax_j(sm_scale * <q[i], k_g[j]>  [-inf where j > i + c]) v_g[j]

computed tile by tile with the online softmax (Milakov & Gimelshein; Dao 2023) in the
log2 domain, so the inner loop uses exp2 and a single pre-multiplied scale:

    qk_scale = sm_scale * log2(e)
    s_j      = qk_scale * <q, k_j>
    m'       = max(m, max_j s_j);   alpha = 2^(m - m')
    l'       = alpha * l + sum_j 2^(s_j - m')
    acc'     = alpha * acc + sum_j 2^(s_j - m') v_j          (fp32 accumulators)
    O        = acc / l                                       (0 where a row sees no key)

Causal loop split: for a query tile of rows [m0, m0 + BLOCK_M), KV tiles that end at or
before key m0 + c + 1 are visible to every row and run without any mask; only the few
tiles on the diagonal band (and the ragged tail past S_kv) run the masked variant.
Causal query tiles are launched heaviest-first so the long diagonal tiles do not trail.

Hopper (sm_90+): Q/K/V/O tiles move through host-built TMA tensor descriptors
(`triton.tools.tensor_descriptor.TensorDescriptor`, 4-D over (B, H, S, D), zero-padded past
S); every other device, and Triton's interpreter, takes the portable pointer path. The
two paths share the same online-softmax code.

Sliding window (Mistral; `window=`, causal only): query position p sees keys in (p - window, p].
HAS_WINDOW is a compile-time switch, so the no-window kernels are the code they were; with it,
the KV loop starts at the tile of the tile's first row's lowest key (tiles wholly below the
window are never loaded), a straddling tile runs masked and the rest as above.

Reference: kernels/attention_ref.py (attention_ref, varlen_attention_ref).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from kernels._triton import interpreting, launch_tuned, tune_bench

try:  # Triton >= 3.3; absent -> pointer path only.
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128)

# Interpreter runs use one small fixed tile (autotuning under the interpreter would take
# minutes). 32x16 still gives several query tiles and both loop halves at seq 37-64.
_INTERPRET_META = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)
# Short sequences (both <= this) skip autotuning and use _SMALL_META: the problem is tiny,
# and tuning every (head dim, group, causal) variant would cost far more than it saves.
_SMALL_SEQ = 256
_SMALL_META = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
# Shared-memory bound used to prune configs before compiling them (H100: 227 KB per block).
_SMEM_BUDGET_BYTES = 227 * 1024


# --------------------------------------------------------------------------- helpers


def interpret_upcast(t: torch.Tensor) -> bool:
    """Whether tile_dot must multiply in fp32 (bf16 under the interpreter; see tile_dot)."""
    return interpreting() and t.dtype == torch.bfloat16


def device_problem(name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Problems with where `tensors` live: one device, CUDA (or CPU under the interpreter)."""
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
        return [f"all tensors must be on one device, got {where}"]
    device = devices.pop()
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return []
    return [f"tensors are on {device}, but the Triton kernel needs a CUDA device; on CPU use "
            f"kernels.attention_ref ({name}'s reference) or set TRITON_INTERPRET=1 before importing "
            f"triton to run the kernel in Triton's interpreter"]


def device_guard(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _seq_bucket(n: int) -> int:
    """Autotune key for a sequence length: next power of two (>= 64), so every new length
    does not re-tune."""
    return max(64, triton.next_power_of_2(max(int(n), 1)))


def _coarse_bucket(n: int) -> int:
    """Varlen autotune key: three length classes. An engine's steps bring ever new maxima;
    power-of-two buckets made it re-tune (seconds each) in the middle of serving."""
    return 512 if n <= 512 else 4096 if n <= 4096 else 32768


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need sm_90+, a 16-byte-aligned base and 16-byte-aligned strides."""
    if TensorDescriptor is None or interpreting():
        return False
    t0 = tensors[0]
    if not t0.is_cuda or torch.cuda.get_device_capability(t0.device)[0] < 9:
        return False
    for t in tensors:
        if t.data_ptr() % 16 or t.stride(-1) != 1 or any(s * t.element_size() % 16 for s in t.stride()[:-1]):
            return False
        if t.numel() == 0:
            return False
    return True


def _keep_config(conf: triton.Config, head_dim: int) -> bool:
    """Drop configs that cannot win on Hopper before paying for their compilation."""
    bm, bn = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"]
    if bm == 64 and conf.num_warps == 8:  # one 64-row wgmma tile per 4 warps; 8 warps idle half the time
        return False
    if bm == 128 and bn == 32:  # too little work per K/V tile to hide its load
        return False
    smem = conf.num_stages * 2 * bn * head_dim * 2 + bm * head_dim * 2  # K+V ring + Q tile, 2-byte elements
    return smem <= _SMEM_BUDGET_BYTES


def _prune(configs, named_args, **kwargs):
    head_dim = named_args.get("HEAD_DIM", kwargs.get("HEAD_DIM"))
    kept = [c for c in configs if _keep_config(c, head_dim)]
    return kept or configs[:1]


def _set_tma_blocks(nargs):
    """Autotune pre-hook: descriptor block shapes follow the config being tried."""
    if nargs.get("desc_q") is None:
        return
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
    nargs["desc_q"].block_shape = [1, 1, bm, d]
    nargs["desc_o"].block_shape = [1, 1, bm, d]
    nargs["desc_k"].block_shape = [1, 1, bn, d]
    nargs["desc_v"].block_shape = [1, 1, bn, d]


AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_set_tma_blocks)
    for bm in (64, 128)
    for bn in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3, 4)
]


# --------------------------------------------------------------------------- kernels


@triton.jit
def tile_dot(a, b, acc, UPCAST: tl.constexpr):
    """tl.dot(a, b, acc). UPCAST (set only under the interpreter for bf16): Triton's interpreter
    multiplies bf16 tiles as their raw uint16 bit patterns, so multiply the (already rounded)
    bf16 values in fp32 there instead. Compiled kernels never take this branch."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def _online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale, cols, rows, S_KV, causal_offset, window,
                         MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         UPCAST: tl.constexpr):
    """Fold one KV tile into (acc, l, m). q: (BM, D), k/v: (BN, D); acc (BM, D) fp32."""
    qk = tile_dot(q, tl.trans(k), None, UPCAST)  # (BM, BN) fp32
    if MASKED:
        keep = cols[None, :] < S_KV
        if IS_CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + causal_offset)
        if HAS_WINDOW:  # sliding window: keys at positions > the query's - window
            keep = keep & (cols[None, :] > rows[:, None] + causal_offset - window)
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing visible yet keeps m = -inf; subtract 0 there so 2^(-inf - 0) = 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # qk_scale > 0
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tile_dot(p.to(v.dtype), v, acc, UPCAST)
    return acc, l_i, m_new


@triton.jit
def _attn_kv_range(acc, l_i, m_i, q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn,
                   lo, hi, rows, S_KV, causal_offset, qk_scale, window, key_lo,
                   MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr,
                   UPCAST: tl.constexpr):
    """Run KV tiles [lo, hi) (lo a multiple of BLOCK_N). K/V point at this (batch, kv head).
    With HAS_WINDOW the masked (pointer-path) loads also skip keys < key_lo: below the window
    of every row of the tile, so a freed paged block there is never read."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if USE_TMA:  # zero-padded past S_kv by the descriptor
            k = desc_k.load([b, h_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            v = desc_v.load([b, h_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
        elif MASKED:
            in_kv = cols[:, None] < S_KV
            if HAS_WINDOW:
                in_kv = in_kv & (cols[:, None] >= key_lo)
            k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=in_kv, other=0.0)
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=in_kv, other=0.0)
        else:
            k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :])
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :])
        acc, l_i, m_i = _online_softmax_step(acc, l_i, m_i, q, k, v, qk_scale, cols, rows, S_KV,
                                             causal_offset, window, MASKED, IS_CAUSAL, HAS_WINDOW, UPCAST)
    return acc, l_i, m_i


@triton.jit
def _attn_tile(q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn, m0, S_Q, S_KV, qk_scale, window,
               IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr):
    """Normalized output (BM, D) fp32 for query rows [m0, m0 + BM) of one (batch, head).

    HAS_WINDOW (causal only): row i (position i + c) sees keys in (i + c - window, i + c]. The
    KV loop starts at the tile holding the first row's lowest key, so tiles wholly below the
    window are skipped, not masked; tiles straddling its lower edge run masked, the band every
    row sees whole runs unmasked."""
    rows = m0 + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if IS_CAUSAL:
        causal_offset = S_KV - S_Q
        # Keys j <= m0 + c are visible to every row of the tile; the tile's last row sees j <= m0 + BM - 1 + c.
        full_end = tl.maximum(tl.minimum(m0 + causal_offset + 1, S_KV), 0)
        end = tl.maximum(tl.minimum(m0 + BLOCK_M + causal_offset, S_KV), 0)
    else:
        causal_offset = 0
        full_end = S_KV
        end = S_KV
    full_end = (full_end // BLOCK_N) * BLOCK_N
    key_lo = 0
    start = 0
    if HAS_WINDOW:
        # First row's lowest visible key; from `start` on every row of the tile sees every key.
        key_lo = tl.maximum(m0 + causal_offset - window + 1, 0)
        lo = (key_lo // BLOCK_N) * BLOCK_N
        start = tl.cdiv(tl.maximum(m0 + BLOCK_M + causal_offset - window, 0), BLOCK_N) * BLOCK_N
        start = tl.minimum(tl.maximum(start, lo), full_end)
        # Lower window edge: masked (tiles below lo are never visited).
        acc, l_i, m_i = _attn_kv_range(acc, l_i, m_i, q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn,
                                       lo, start, rows, S_KV, causal_offset, qk_scale, window, key_lo,
                                       True, IS_CAUSAL, HAS_WINDOW, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST)
    # Off-diagonal tiles inside the window: no mask.
    acc, l_i, m_i = _attn_kv_range(acc, l_i, m_i, q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn,
                                   start, full_end, rows, S_KV, causal_offset, qk_scale, window, key_lo,
                                   False, IS_CAUSAL, HAS_WINDOW, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST)
    # Diagonal band and ragged tail: masked.
    acc, l_i, m_i = _attn_kv_range(acc, l_i, m_i, q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn,
                                   full_end, end, rows, S_KV, causal_offset, qk_scale, window, key_lo,
                                   True, IS_CAUSAL, HAS_WINDOW, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST)
    inv_l = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)  # rows that saw no key: acc = 0 -> output 0
    return acc * inv_l[:, None]


# Key-only ints and the window are not specialized on (an int is compiled apart when it is 1 or a
# multiple of 16: a new autotune key would recompile every config).
@triton.jit(do_not_specialize=["window", "S_Q_BUCKET", "S_KV_BUCKET", "BH_BUCKET"])
def _flash_fwd_kernel(Q, K, V, O, desc_q, desc_k, desc_v, desc_o,
                      stride_qb, stride_qh, stride_qm,
                      stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn,
                      stride_ob, stride_oh, stride_om,
                      qk_scale, H_Q, S_Q, S_KV, window,
                      S_Q_BUCKET, S_KV_BUCKET, BH_BUCKET,  # autotune key only
                      GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                      HAS_WINDOW: tl.constexpr, USE_TMA: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(S_q, BLOCK_M), B * Hq). Last dim of every tensor has stride 1."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if IS_CAUSAL:  # heaviest query tiles first
        pid_m = tl.num_programs(0) - 1 - pid_m
    b = pid_bh // H_Q
    h = pid_bh % H_Q
    h_kv = h // GROUP
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)

    K = K + b64 * stride_kb + h_kv.to(tl.int64) * stride_kh
    V = V + b64 * stride_vb + h_kv.to(tl.int64) * stride_vh
    if USE_TMA:
        q = desc_q.load([b, h, m0, 0]).reshape(BLOCK_M, HEAD_DIM)
    else:
        q_ptrs = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qm + offs_d[None, :]
        q = tl.load(q_ptrs, mask=rows[:, None] < S_Q, other=0.0)  # (BM, D)

    out = _attn_tile(q, K, V, desc_k, desc_v, b, h_kv, stride_kn, stride_vn, m0, S_Q, S_KV, qk_scale, window,
                     IS_CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N, HEAD_DIM, USE_TMA, UPCAST)
    if USE_TMA:  # the descriptor drops rows past S_q
        desc_o.store([b, h, m0, 0], out.to(O.dtype.element_ty).reshape(1, 1, BLOCK_M, HEAD_DIM))
    else:
        o_ptrs = O + b64 * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=rows[:, None] < S_Q)


@triton.jit(do_not_specialize=["window", "S_Q_BUCKET", "S_KV_BUCKET"])
def _flash_varlen_kernel(Q, K, V, O, cu_seqlens_q, cu_seqlens_k,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_ot, stride_oh,
                         qk_scale, H_Q, window,
                         S_Q_BUCKET, S_KV_BUCKET,  # autotune key only
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                         HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (cdiv(max_seqlen_q, BLOCK_M), num_seqs * Hq) over packed (total, H, D) tensors."""
    pid_m = tl.program_id(0)
    pid_sh = tl.program_id(1)
    if IS_CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    seq = pid_sh // H_Q
    h = pid_sh % H_Q
    h_kv = h // GROUP
    q_start = tl.load(cu_seqlens_q + seq)
    S_Q = tl.load(cu_seqlens_q + seq + 1) - q_start
    k_start = tl.load(cu_seqlens_k + seq)
    S_KV = tl.load(cu_seqlens_k + seq + 1) - k_start
    m0 = pid_m * BLOCK_M
    if m0 >= S_Q:
        return
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    K = K + k_start.to(tl.int64) * stride_kt + h_kv * stride_kh
    V = V + k_start.to(tl.int64) * stride_vt + h_kv * stride_vh
    q_ptrs = Q + (q_start + rows.to(tl.int64))[:, None] * stride_qt + h * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=rows[:, None] < S_Q, other=0.0)  # (BM, D)
    out = _attn_tile(q, K, V, None, None, seq, h_kv, stride_kt, stride_vt, m0, S_Q, S_KV, qk_scale, window,
                     IS_CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N, HEAD_DIM, False, UPCAST)
    o_ptrs = O + (q_start + rows.to(tl.int64))[:, None] * stride_ot + h * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=rows[:, None] < S_Q)


_KEY = ["S_Q_BUCKET", "S_KV_BUCKET", "HEAD_DIM", "GROUP", "IS_CAUSAL", "HAS_WINDOW"]
_flash_fwd_tuned = triton.autotune(AUTOTUNE_CONFIGS, key=_KEY + ["BH_BUCKET", "USE_TMA"],
                                   prune_configs_by={"early_config_prune": _prune},
                                   do_bench=tune_bench)(_flash_fwd_kernel)
_flash_varlen_tuned = triton.autotune(AUTOTUNE_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                                      do_bench=tune_bench)(_flash_varlen_kernel)
_VARLEN_TUNED: dict[tuple, dict] = {}  # varlen configs picked, by autotune key + dtype + device


# --------------------------------------------------------------------------- wrappers


def _check_common(name: str, q, k, v, out, q_rank: int, head_axis: int) -> list[str]:
    problems = []
    tensors = {"q": q, "k": k, "v": v} | ({"out": out} if out is not None else {})
    if any(t.dim() != q_rank for t in tensors.values()):
        return [f"expected {q_rank}-D tensors, got " + ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())]
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        problems.append(f"dtypes must all be one of fp16/bf16, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        problems.append(f"head dim must be one of {SUPPORTED_HEAD_DIMS} and equal for q/k/v, got "
                        f"{q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}")
    if k.shape != v.shape:
        problems.append(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    hq, hkv = q.shape[head_axis], k.shape[head_axis]
    if hkv == 0 or hq % hkv != 0:
        problems.append(f"query heads ({hq}) must be a multiple of kv heads ({hkv}) for GQA")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        problems.append(f"out must match q: {tuple(q.shape)} {q.dtype}, got {tuple(out.shape)} {out.dtype}")
    not_contig = [n for n, t in tensors.items() if t.stride(-1) != 1]
    if not_contig:
        problems.append(f"the last (head) dim must be contiguous (stride 1) in {not_contig}; call .contiguous()")
    return problems + device_problem(name, tensors)


def _raise(name: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))


def window_arg(name: str, window, causal: bool = True) -> int:
    """The kernels' window: 0 for None/0 (no window), else a positive int (causal attention only)."""
    if window is None or (not isinstance(window, bool) and isinstance(window, int) and window == 0):
        return 0
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        _raise(name, [f"window must be None, 0 or a positive int, got {window!r}"])
    if not causal:
        _raise(name, [f"window={window} needs causal=True (a sliding window looks back from each query)"])
    return window


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    sm_scale: float | None = None, *, out: torch.Tensor | None = None,
                    use_tma: bool | None = None, window: int | None = None) -> torch.Tensor:
    """softmax(sm_scale * q k^T [causal]) v for (B, H, S, D)-shaped tensors, in Triton.

    q: (B, Hq, S_q, D); k, v: (B, Hkv, S_kv, D); fp16 or bf16, D in {64, 128}, Hq % Hkv == 0.
    Any strides with a contiguous last dim work, so (B, S, H, D) storage passes as
    `x.transpose(1, 2)`. Causal alignment is bottom-right (query i sees keys j <= i + S_kv - S_q);
    rows that see no key get 0. sm_scale defaults to 1/sqrt(D). out, if given, is written in
    place and returned (same shape/dtype as q); otherwise the result has q's strides.
    use_tma: None picks TMA descriptors on sm_90+ when strides/alignment allow; False forces
    the portable pointer path (for A/B timing); True demands TMA.
    window (causal only; None or 0 = none): query i (position i + S_kv - S_q) sees keys in
    (position - window, position] (Mistral / transformers' sliding window); KV tiles wholly
    outside every row's window are skipped, so the cost per query is O(window).
    """
    _raise("flash_attention", _check_common("flash_attention", q, k, v, out, 4, 1))
    win = window_arg("flash_attention", window, causal)
    B, Hq, S_q, D = q.shape
    Bk, Hkv, S_kv, _ = k.shape
    if Bk != B:
        _raise("flash_attention", [f"q and k/v batch sizes differ: {B} vs {Bk}"])
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        _raise("flash_attention", [f"sm_scale must be positive, got {scale}"])
    if out is None:
        out = torch.empty_like(q)
    if out.numel() == 0:
        return out
    if S_kv == 0:
        return out.zero_()

    tma_possible = _tma_ok(q, k, v, out)
    if use_tma and not tma_possible:
        _raise("flash_attention", ["use_tma=True needs sm_90+, 16-byte-aligned pointers and strides, "
                                   "and not the interpreter"])
    tma = tma_possible if use_tma is None else bool(use_tma)
    fixed = _INTERPRET_META if interpreting() else (_SMALL_META if max(S_q, S_kv) <= _SMALL_SEQ else None)
    descs = [None] * 4
    if tma:  # with autotuning the pre-hook resets block shapes per config
        bm, bn = (fixed["BLOCK_M"], fixed["BLOCK_N"]) if fixed else (64, 64)
        descs = [TensorDescriptor.from_tensor(t, [1, 1, b, D]) for t, b in ((q, bm), (k, bn), (v, bn), (out, bm))]

    args = (q, k, v, out, *descs,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            scale * LOG2E, Hq, S_q, S_kv, win, _seq_bucket(S_q), _seq_bucket(S_kv),
            triton.next_power_of_2(B * Hq))  # batch x heads: how many tiles fill the GPU
    consts = dict(GROUP=Hq // Hkv, HEAD_DIM=D, IS_CAUSAL=bool(causal), HAS_WINDOW=win > 0, USE_TMA=tma,
                  UPCAST=interpret_upcast(q))
    grid = lambda meta: (triton.cdiv(S_q, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    with device_guard(q):
        if fixed:
            _flash_fwd_kernel[grid(fixed)](*args, **consts, **fixed)
        else:
            _flash_fwd_tuned[grid](*args, **consts)
    return out


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                           causal: bool = False, sm_scale: float | None = None, *,
                           out: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """flash_attention over packed variable-length sequences (flash-attn's varlen layout).

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D); fp16/bf16, D in {64, 128}.
    cu_seqlens_q, cu_seqlens_k: (num_seqs + 1,) int32 on q's device, prefix sums starting at 0:
    sequence s owns q rows cu_seqlens_q[s]:cu_seqlens_q[s+1] and kv rows likewise.
    max_seqlen_q / max_seqlen_k: host ints >= every sequence's length (they size the grid and
    the autotune key; no device sync here). Each sequence attends only to itself, causal
    bottom-right per sequence. Returns (total_q, Hq, D) (or fills `out`).
    window: as in flash_attention, per sequence (keys below every row's window are not even
    loaded, so a sequence's K may start anywhere before its window).
    """
    name = "flash_attention_varlen"
    problems = _check_common(name, q, k, v, out, 3, 1)
    win = window_arg(name, window, causal)
    for n, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 2 or cu.device != q.device:
            problems.append(f"{n} must be a 1-D int32 tensor of num_seqs + 1 >= 2 entries on {q.device}, "
                            f"got {cu.dtype} {tuple(cu.shape)} on {cu.device}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        problems.append(f"cu_seqlens_q ({cu_seqlens_q.numel()}) and cu_seqlens_k ({cu_seqlens_k.numel()}) "
                        "must have one length")
    _raise(name, problems)
    _, Hq, D = q.shape
    Hkv = k.shape[1]
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        _raise(name, [f"sm_scale must be positive, got {scale}"])
    if out is None:
        out = torch.empty_like(q)
    num_seqs = cu_seqlens_q.numel() - 1
    if out.numel() == 0 or max_seqlen_q <= 0:
        return out
    # Rows whose sequence has an empty KV are written by the kernel (as 0) like every other row.

    args = (q, k, v, out, cu_seqlens_q, cu_seqlens_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), scale * LOG2E, Hq, win,
            _coarse_bucket(max_seqlen_q), _coarse_bucket(max_seqlen_k))
    consts = dict(GROUP=Hq // Hkv, HEAD_DIM=D, IS_CAUSAL=bool(causal), HAS_WINDOW=win > 0,
                  UPCAST=interpret_upcast(q))
    fixed = _INTERPRET_META if interpreting() else (
        _SMALL_META if max(max_seqlen_q, max_seqlen_k) <= _SMALL_SEQ else None)
    with device_guard(q):
        if fixed:
            grid = (triton.cdiv(max_seqlen_q, fixed["BLOCK_M"]), num_seqs * Hq)
            _flash_varlen_kernel[grid](*args, **consts, **fixed)
        else:
            grid = lambda meta: (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), num_seqs * Hq)  # noqa: E731
            key = (*args[-2:], *consts.values(), q.dtype, q.device)
            launch_tuned(_flash_varlen_tuned, _VARLEN_TUNED, key, grid, args, consts)
    return out


def tune_varlen(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device, max_q: int,
                max_k: int, max_tokens: int, causal: bool = True, window: int | None = None) -> int:
    """Autotune flash_attention_varlen now for every key a step of prefill chunks up to max_q new
    tokens over up to max_k keys (max_tokens new tokens in all) can reach, so no serving step pays
    a tune. Returns the number of keys tuned; a no-op under the interpreter and off CUDA."""
    if interpreting() or torch.device(device).type != "cuda":
        return 0
    classes = lambda hi: [c for c in (512, 4096, 32768) if c <= _coarse_bucket(hi)]  # noqa: E731  _coarse_bucket's
    tuned = 0
    for cq in classes(max_q):
        for ck in classes(max_k):
            q_len = min(cq, max_q)
            k_len = max(q_len, min(ck, max_k))
            if _coarse_bucket(k_len) != ck or max(q_len, k_len) <= _SMALL_SEQ:
                continue  # unreachable (keys >= queries), or the fixed small-sequence config
            n = max(1, min(16, max_tokens // q_len))
            q = torch.randn(n * q_len, num_q_heads, head_dim, device=device, dtype=dtype)
            k = torch.randn(n * k_len, num_kv_heads, head_dim, device=device, dtype=dtype)
            cu_q = torch.arange(0, n + 1, device=device, dtype=torch.int32) * q_len
            cu_k = torch.arange(0, n + 1, device=device, dtype=torch.int32) * k_len
            flash_attention_varlen(q, k, k, cu_q, cu_k, q_len, k_len, causal=causal, window=window)
            tuned += 1
    return tuned
