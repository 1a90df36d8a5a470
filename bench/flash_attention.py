"""Attention forward (prefill) and decode: ours (Triton) against every alternative installed.

Question: how many TFLOP/s does our FlashAttention kernel reach against the matmul
ceiling, from 512 to 16K tokens of context, and how close does our split-KV decode come
to the copy bandwidth? Does anything installed beat either?

  python3 -m bench.flash_attention                  # GPU: full sweep; CPU: a small smoke run
  bazel run //bench:flash_attention -- --quick --causal=true --variants=ours,sdpa_flash,flash_attn
  bazel run //bench:flash_attention -- --profile --seq_lens=4096 --sweeps=seq

Prefill variants, (B, H, S, D) tensors, GQA (32 query heads on 8 KV heads by default):
  naive           PyTorch eager: K/V expanded to Hq heads, scores (B, Hq, S, S) materialised in
                  the input dtype, softmax, matmul (the readable path; Hugging Face "eager")
  sdpa_math       F.scaled_dot_product_attention(enable_gqa=True) under sdpa_kernel(MATH)
  sdpa_flash      ... under sdpa_kernel(FLASH_ATTENTION)      (each SDPA variant is
  sdpa_efficient  ... under sdpa_kernel(EFFICIENT_ATTENTION)   "skipped" with SDPA's reason
  sdpa_cudnn      ... under sdpa_kernel(CUDNN_ATTENTION)       when it cannot run the case)
  flex            torch.compile(flex_attention), causal block mask (compile time shown apart)
  ours            kernels.flash_attention.flash_attention (autotune time shown apart)
  flash_attn      flash_attn.flash_attn_func (FlashAttention-2), if installed
  fa4             flash_attn.cute.flash_attn_func (FlashAttention-4, package flash-attn-4), if installed
  flashinfer      flashinfer.single_prefill_with_kv_cache (B = 1) or the ragged batch prefill
                  wrapper (B > 1, planned outside the timing), if installed
  reference       kernels.attention_ref.attention_ref, fp32 (CPU default only: it needs S^2 fp32)
Decode variants (one query token per sequence, KV cache of L tokens):
  ours            kernels.flash_decode.flash_decode, contiguous (B, Hkv, L, D) cache
  ours_paged      kernels.flash_decode.paged_flash_decode, vLLM layout, --page_size tokens a
                  block, blocks shuffled (a real pool is fragmented)
  sdpa            F.scaled_dot_product_attention with a query of length 1 (SDPA picks the backend)
  flashinfer      flashinfer.BatchDecodeWithPagedKVCacheWrapper on the same paged cache
  reference       attention_ref, fp32 (CPU default only)

Sweeps: (1) sequence length at a fixed number of tokens per batch (B = --tokens // S),
(2) batch size at --batch_seq_len, causal and non-causal both, (3) decode over
--kv_lens x --decode_batches.

FLOPs (the TFLOP/s numerator): 4 * B * Hq * S * S * D non-causal (two matmuls of
2 * S * S * D per head), half that causal. Decode bytes (the GB/s numerator): the KV
cache read, 2 * B * Hkv * L * D * element size. Rooflines measured in the same run:
bench.common.measure_matmul_tflops (8192^3 in --dtype) and measure_copy_bandwidth (1 GiB).

Correctness gate: every variant's first output is checked against the fp32 reference
(attention_ref on the same inputs), computed per (batch, KV head group) and per chunk of
query rows so it never materialises more than CHUNK_SCORES scores; above
--max_check_scores in all, only the first and last (batch, KV head) pairs are checked.
Inputs are unit normal; with sm_scale = 1/sqrt(D) scores have unit variance and
outputs stay within O(1). Two tests, both per dtype (ATTN_TOL): element-wise
|got - ref| <= tol * (1 + |ref|) (bench.common.check_close; bf16: 2e-2), and the
relative RMS error ||got - ref|| / ||ref|| <= tol, which catches a kernel that drops a
KV tile even at long S, where non-causal outputs average ~S values and shrink as
1/sqrt(S) below the element-wise tolerance. A variant that fails is reported WRONG
and never timed; one that raises is FAILED.

Timing (bench.common.time_fn): CUDA events around one call, a 256 MB L2 flush before
each, p10/p50/p90 over --iters calls. Decode cases are timed a second way too: the call
captured once into a CUDA graph and replayed (bench.common.time_cuda_graph), which is
what a kernel costs inside a graphed decode step, without Python launch overhead. The first call (the check) autotunes our Triton
kernels and compiles flex; it is untimed and reported as first_call_s.

On a CPU (the default there is --quick): fp32, B = 2, 4 / 2 heads, d = 64, S = 128..512;
naive, sdpa_math and the reference, in GFLOP/s. Ours needs a GPU, or TRITON_INTERPRET=1
set before the run, which adds one tiny bf16 case run through Triton's interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from absl import app

from bench import common
from kernels._triton import interpreting
from kernels.attention_ref import attention_ref, causal_mask, naive_attention, paged_kv

PREFILL_VARIANTS = ("naive", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex", "ours",
                    "flash_attn", "fa4", "flashinfer", "reference")
DECODE_VARIANTS = ("ours", "ours_paged", "sdpa", "flashinfer", "reference")
ALL_VARIANTS = tuple(dict.fromkeys(PREFILL_VARIANTS + DECODE_VARIANTS))
OURS = ("ours", "ours_paged")
# Not alternatives to beat: the fp32 reference is the yardstick, not a contender.
NOT_ALTERNATIVES = ("reference",)
# What a CPU run does unless --variants says otherwise (the rest are listed with why not).
CPU_DEFAULT = ("naive", "sdpa_math", "reference", "ours", "sdpa")
SDPA_BACKENDS = {"sdpa_math": "MATH", "sdpa_flash": "FLASH_ATTENTION",
                 "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION"}
SWEEPS = ("seq", "batch", "decode")

# Full sweep: 512..16K context at 16K tokens a batch (a prefill chunk of a serving step),
# batch 1..32 at 2K, decode at 1K..32K cached tokens for 1..64 sequences. Shapes are
# Llama-3 8B's attention: 32 query heads on 8 KV heads, head dim 128.
FULL = {"seq_lens": (512, 1024, 2048, 4096, 8192, 16384), "tokens": 16384, "batch_seq_len": 2048,
        "batches": (1, 2, 4, 8, 16, 32), "kv_lens": (1024, 2048, 4096, 8192, 16384, 32768),
        "decode_batches": (1, 4, 16, 64)}
# --quick on a GPU: one short and one long case per sweep; a minute, not ten.
QUICK_GPU = {"seq_lens": (1024, 4096), "tokens": 16384, "batch_seq_len": 2048, "batches": (1, 8),
             "kv_lens": (4096, 32768), "decode_batches": (1, 32)}
# --quick on a CPU (the default there): a smoke test of the harness, seconds in all.
QUICK_CPU = {"seq_lens": (128, 256, 512), "seq_batch": 2, "batch_seq_len": 256, "batches": (1, 2, 4),
             "kv_lens": (256, 1024), "decode_batches": (1, 4)}
GPU_SHAPE = {"dtype": "bf16", "heads": 32, "kv_heads": 8, "head_dim": 128}
CPU_SHAPE = {"dtype": "fp32", "heads": 4, "kv_heads": 2, "head_dim": 64}
# The Triton interpreter case (CPU with TRITON_INTERPRET=1): tiny, bf16 (ours has no fp32).
INTERP_CASE = {"S": 64, "B": 1, "L": 64, "decode_B": 2, "dtype": torch.bfloat16}
INTERP_MAX_SCORES = 2 * 4 * 64 * 64  # B * Hq * S_q * S_kv above this is too slow interpreted

# Check tolerances, per output dtype: element-wise tol * (1 + |ref|), and relative RMS.
# bf16: the 2e-2 of the issue (8 mantissa bits). Measured on a CPU at S = 512..4096: max abs
# error SDPA 8e-3, naive ~2e-2 (its scores are rounded to bf16, mostly on O(1) causal rows);
# relative RMS 2e-3 and 6e-3, against 0.1+ for a dropped 64-key tile.
# fp16 has 3 more bits; fp32 differs only in summation order.
ATTN_TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 2e-4}
REL_RMS_TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}
# One fp32 reference call materialises at most this many scores (x ~4 temporaries, 4 B each).
CHUNK_SCORES = 1 << 26

# Flags bench.kernels and other bench modules define too, with the same meaning: defined once
# per process, so pytest can import the bench modules side by side (bench.common.define_flag).
_define = common.define_flag


_define("boolean", "quick", None,
        "Few shapes (default: on for a CPU, where this is a harness smoke test; off on a GPU).")
_define("list", "sweeps", list(SWEEPS), "Sweeps to run: seq, batch, decode (default: all three).")
_define("list", "seq_lens", None, "Sequence lengths S of the seq sweep, tokens. Default 512..16384 (powers of two): "
        "from a short prompt to a long-context prefill.")
_define("integer", "tokens", None, "Tokens per batch of the seq sweep, B = tokens // S. Default 16384 (a prefill "
        "chunk of a serving step, so every S does the same token count); a CPU run uses B = 2.")
_define("list", "batches", None, "Batch sizes of the batch sweep, sequences. Default 1..32 (powers of two).")
_define("integer", "batch_seq_len", None,
        "S of the batch sweep, tokens. Default 2048 (a typical chat prompt); CPU 256.")
_define("list", "kv_lens", None, "KV cache lengths of the decode sweep, tokens. Default 1024..32768: a chat turn "
        "to Llama-3's long context.")
_define("list", "decode_batches", None, "Batch sizes of the decode sweep, sequences. Default 1,4,16,64 "
        "(one user to a busy server).")
_define("enum", "causal", "both", "Masks of the prefill sweeps: both (default: a prompt is causal, an encoder or "
        "cross-attention is not), true or false.", enum_values=["both", "true", "false"])
_define("list", "variants", None, "Variants to run (default: all; on a CPU naive, sdpa_math, sdpa, reference and "
        "ours). Of: " + ", ".join(ALL_VARIANTS))
_define("string", "dtype", None, "Element type: bf16, fp16, fp32. Default bf16 on a GPU (what Llama runs in), fp32 on "
        "a CPU (CPU bf16 matmuls are slow emulations).")
_define("integer", "head_dim", None, "Head dimension D, elements. Default 128 (Llama-3); 64 on a CPU.")
_define("integer", "heads", None, "Query heads Hq. Default 32 (Llama-3 8B); 4 on a CPU.")
_define("integer", "kv_heads", None, "KV heads Hkv (must divide --heads). Default 8 (Llama-3 8B, GQA 4:1); 2 on a CPU.")
_define("integer", "page_size", 16, "Tokens per KV block of the paged decode cache. 16: vLLM's default.")
_define("integer", "warmup", None, "Untimed calls per variant after the checked first call, count. Default 10 on a "
        "GPU (clocks settle), 2 on a CPU.")
_define("integer", "iters", None, "Timed calls per variant, count. Default 50 on a GPU (stable p10/p90), 10 on a CPU.")
_define("integer", "max_check_scores", None, "Reference scores (B*Hq*S*S) above which only a slice of (batch, KV "
        "head) pairs is checked, count. Default 2^34 on a GPU (seconds of fp32 work), 2^28 on a CPU.")
_define("integer", "seed", 0, "Seed of the random inputs.")
_define("boolean", "plot", True, "Write flash_attention_{seq,batch,decode}.png (rates vs S / B / L, ceilings dashed).")
_define("boolean", "profile", False, "Also profile one seq-sweep case (S nearest 4096, causal if swept) with "
        "torch.profiler: a chrome trace in the results folder and the top kernels by device time. Off by default: "
        "the profiler perturbs nothing timed, but adds a minute.")


@dataclasses.dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly).
    None picks the device's default, as each flag's help says."""

    quick: bool | None
    sweeps: tuple[str, ...]
    seq_lens: tuple[str, ...] | None
    tokens: int | None
    batches: tuple[str, ...] | None
    batch_seq_len: int | None
    kv_lens: tuple[str, ...] | None
    decode_batches: tuple[str, ...] | None
    causal: str
    variants: tuple[str, ...] | None
    dtype: str | None
    head_dim: int | None
    heads: int | None
    kv_heads: int | None
    page_size: int
    warmup: int | None
    iters: int | None
    max_check_scores: int | None
    seed: int
    plot: bool
    profile: bool


# ----------------------------------------------------------------------------
# The math: FLOPs, bytes, inputs, the readable path and the reference check
# ----------------------------------------------------------------------------


def attention_flops(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int, causal: bool) -> int:
    """4 * B * Hq * S_q * S_kv * D (QK^T and PV, 2 flops a multiply-add); half that causal.

    Causal counts the convention of FlashAttention's benchmarks (exactly half), not the
    (S + 1) / (2S) fraction of the lower triangle.
    """
    flops = 4 * batch * heads * seq_q * seq_kv * head_dim
    return flops // 2 if causal else flops


def decode_kv_bytes(batch: int, kv_heads: int, kv_len: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of K and V a decode step must read: 2 * B * Hkv * L * D * element size."""
    return 2 * batch * kv_heads * kv_len * head_dim * torch.empty((), dtype=dtype).element_size()


def make_inputs(batch: int, heads: int, kv_heads: int, seq: int, head_dim: int, dtype: torch.dtype,
                device: str, seed: int) -> dict[str, torch.Tensor]:
    """Unit-normal q (B, Hq, S, D), k and v (B, Hkv, S, D)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    return {"q": randn(batch, heads, seq, head_dim), "k": randn(batch, kv_heads, seq, head_dim),
            "v": randn(batch, kv_heads, seq, head_dim)}


def make_decode_inputs(batch: int, heads: int, kv_heads: int, kv_len: int, head_dim: int, dtype: torch.dtype,
                       device: str, seed: int) -> dict[str, torch.Tensor]:
    """q (B, Hq, D); contiguous caches (B, Hkv, L, D) full to L; seq_lens (B,) int32 = L."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    return {"q": randn(batch, heads, head_dim), "k_cache": randn(batch, kv_heads, kv_len, head_dim),
            "v_cache": randn(batch, kv_heads, kv_len, head_dim),
            "seq_lens": torch.full((batch,), kv_len, dtype=torch.int32, device=device)}


class ReferenceCheck:
    """The fp32 reference of one case, computed once (lazily) in chunks, and the check against it.

    q: (B, Hq, S_q, D), k/v: (B, Hkv, S_kv, D). The reference is attention_ref on fp32
    copies, per (batch, KV head group) and per chunk of query rows: rows [r0, r1) see keys
    [0, r1 + S_kv - S_q) under the causal mask, so slicing the keys there keeps
    attention_ref's bottom-right alignment exact. Above `max_scores` only the first and
    last (batch, KV head) pairs are checked (`sampled`).
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, sm_scale: float,
                 max_scores: int):
        self.q, self.k, self.v, self.causal, self.sm_scale = q, k, v, causal, sm_scale
        B, Hq, S_q, _ = q.shape
        Hkv, S_kv = k.shape[1], k.shape[2]
        self.group = Hq // Hkv
        self.pairs = [(b, g) for b in range(B) for g in range(Hkv)]
        self.sampled = B * Hq * S_q * S_kv > max_scores
        if self.sampled:
            self.pairs = list(dict.fromkeys([(0, 0), (B - 1, Hkv - 1)]))
        self.rows = max(1, CHUNK_SCORES // (self.group * max(S_kv, 1)))
        self._chunks: list[tuple[int, int, int, int, torch.Tensor]] | None = None

    def _reference(self) -> list[tuple[int, int, int, int, torch.Tensor]]:
        chunks = []
        S_q, S_kv, G = self.q.shape[2], self.k.shape[2], self.group
        for b, g in self.pairs:
            h0, h1 = g * G, (g + 1) * G
            for r0 in range(0, S_q, self.rows):
                r1 = min(S_q, r0 + self.rows)
                k_end = max(0, min(S_kv, r1 + S_kv - S_q)) if self.causal else S_kv
                qs = self.q[b:b + 1, h0:h1, r0:r1].float()  # (1, G, rows, D)
                if k_end == 0:  # no row of the chunk sees a key: output 0
                    ref = torch.zeros_like(qs)
                else:
                    ref = attention_ref(qs, self.k[b:b + 1, g:g + 1, :k_end].float(),
                                        self.v[b:b + 1, g:g + 1, :k_end].float(), self.causal, self.sm_scale)
                chunks.append((b, h0, r0, r1, ref))
        return chunks

    def check(self, got: torch.Tensor, what: str) -> dict[str, float]:
        """Raise AssertionError naming `what` unless `got` matches; return the errors."""
        if tuple(got.shape) != tuple(self.q.shape):
            raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(self.q.shape)}")
        if got.dtype not in ATTN_TOL:
            raise AssertionError(f"{what}: no tolerance for dtype {got.dtype}")
        if self._chunks is None:
            self._chunks = self._reference()
        max_abs, err2, ref2 = 0.0, 0.0, 0.0
        for b, h0, r0, r1, ref in self._chunks:
            part = got[b:b + 1, h0:h0 + self.group, r0:r1]
            common.check_close(part, ref, ATTN_TOL,
                               what=f"{what} [batch {b}, heads {h0}:{h0 + self.group}, rows {r0}:{r1}]")
            diff = part.float() - ref
            max_abs = max(max_abs, diff.abs().max().item() if diff.numel() else 0.0)
            err2 += diff.pow(2).sum().item()
            ref2 += ref.pow(2).sum().item()
        rel = math.sqrt(err2 / ref2) if ref2 > 0 else math.sqrt(err2)
        tol = REL_RMS_TOL[got.dtype]
        if rel > tol:
            raise AssertionError(f"{what}: relative RMS error {rel:.3g} > {tol:g} ({common.dtype_name(got.dtype)}); "
                                 f"max abs err {max_abs:.3g}")
        return {"max_abs_err": max_abs, "rel_rms_err": rel}


# ----------------------------------------------------------------------------
# Variants: make(inputs) does the untimed setup (masks, plans, layouts) and returns fn()
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    name: str
    make: Callable[[dict[str, Any]], Callable[[], torch.Tensor]] | None
    note: str = ""  # why make is None, or what the implementation is
    ctx: Callable[[], Any] | None = None  # held around setup, check and timing (sdpa_kernel)
    first_call: str = "first call"  # what the untimed first call pays for: "autotune", "compile"
    interpreted: bool = False  # Triton's interpreter: few iterations
    unsupported: Callable[[dict[str, Any]], str] | None = None  # case -> reason it cannot run, or ""


def _import(name: str) -> Any:
    """The module, or None when it (or something it needs) is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _version(module: Any) -> str:
    top = sys.modules.get(module.__name__.split(".")[0], module)
    return f"{top.__name__} {getattr(top, '__version__', 'unknown')}"


def _ours_unsupported(case: dict[str, Any]) -> str:
    """Why ours cannot run this case here, or ""."""
    if not common.is_cuda(case["device"]):
        if not interpreting():
            return "needs a GPU or TRITON_INTERPRET=1"
        scores = case["B"] * case["Hq"] * case.get("S", 1) * case.get("S", case.get("L", 1))
        if case["dtype"] not in (torch.float16, torch.bfloat16) or scores > INTERP_MAX_SCORES:
            return "interpreted on the tiny bf16 case only (see the interpreter table)"
    if case["dtype"] not in (torch.float16, torch.bfloat16):
        return f"fp16/bf16 only, not {common.dtype_name(case['dtype'])}"
    if case["D"] not in (64, 128):
        return f"head dim 64 or 128 only, not {case['D']}"
    return ""


def _half_only(case: dict[str, Any]) -> str:
    if case["dtype"] not in (torch.float16, torch.bfloat16):
        return f"fp16/bf16 only, not {common.dtype_name(case['dtype'])}"
    return ""


def _cpu_skip(name: str) -> str:
    """Why a variant is not run on a CPU by default ("" if it is)."""
    if name in CPU_DEFAULT:
        return ""
    if name in ("sdpa_efficient", "sdpa_cudnn"):
        return "needs a GPU"
    if name == "flex":
        return "skipped: CPU run (compiling flex_attention for a CPU takes minutes; name it in --variants)"
    return "skipped: CPU run (name it in --variants)"


def _library(name: str, cpu: bool) -> tuple[Any, str]:
    """(entry point, note) of an external library variant, or (None, why not)."""
    if name == "flash_attn":
        mod = _import("flash_attn")
        fn = getattr(mod, "flash_attn_func", None) if mod is not None else None
    elif name == "fa4":
        fn = None
        mod = None
        for path in ("flash_attn.cute", "flash_attn.cute.interface"):
            mod = _import(path)
            fn = getattr(mod, "flash_attn_func", None) if mod is not None else None
            if fn is not None:
                break
    else:
        mod = _import("flashinfer")
        fn = mod
    if fn is None:
        return None, "not installed"
    if cpu:
        return None, f"needs a GPU ({_version(mod)} installed)"
    return fn, _version(mod)


def build_prefill_variants(names: list[str], device: str, explicit: bool) -> list[Variant]:
    """The prefill variants named; those that cannot run here carry a note instead of make."""
    cpu = not common.is_cuda(device)
    out = []
    for name in names:
        if name not in PREFILL_VARIANTS:
            continue
        if name in ("flash_attn", "fa4", "flashinfer"):
            fn, note = _library(name, cpu)
            out.append(_library_prefill(name, fn, note) if fn is not None else Variant(name, None, note))
            continue
        skip = "" if explicit or not cpu else _cpu_skip(name)
        if skip:
            out.append(Variant(name, None, skip))
        elif name == "naive":
            out.append(Variant(name, _make_naive, "PyTorch eager, scores in the input dtype"))
        elif name == "reference":
            out.append(Variant(name, _make_reference, "fp32 attention_ref"))
        elif name in SDPA_BACKENDS:
            if cpu and name in ("sdpa_efficient", "sdpa_cudnn"):
                out.append(Variant(name, None, "needs a GPU"))
                continue
            backend = getattr(torch.nn.attention.SDPBackend, SDPA_BACKENDS[name])
            out.append(Variant(name, _make_sdpa, f"sdpa_kernel({SDPA_BACKENDS[name]})",
                               ctx=lambda backend=backend: torch.nn.attention.sdpa_kernel([backend])))
        elif name == "flex":
            out.append(Variant(name, _make_flex, "torch.compile(flex_attention)", first_call="compile"))
        elif name == "ours":
            out.append(Variant(name, _make_ours, "kernels.flash_attention", first_call="autotune",
                               interpreted=cpu, unsupported=_ours_unsupported))
    return out


def build_decode_variants(names: list[str], device: str, explicit: bool) -> list[Variant]:
    """The decode variants named, like build_prefill_variants."""
    cpu = not common.is_cuda(device)
    out = []
    for name in names:
        if name not in DECODE_VARIANTS:
            continue
        if name == "flashinfer":
            fn, note = _library(name, cpu)
            out.append(Variant(name, _make_flashinfer_decode, note, unsupported=_half_only) if fn is not None
                       else Variant(name, None, note))
            continue
        if name in OURS:  # our kernels say for themselves why they cannot run on a CPU
            make = _make_ours_decode if name == "ours" else _make_ours_paged
            out.append(Variant(name, make, f"kernels.flash_decode, {'paged' if name != 'ours' else 'contiguous'}",
                               first_call="autotune", interpreted=cpu, unsupported=_ours_unsupported))
            continue
        skip = "" if explicit or not cpu else _cpu_skip(name)
        if skip:
            out.append(Variant(name, None, skip))
        elif name == "sdpa":
            out.append(Variant(name, _make_sdpa_decode, "F.scaled_dot_product_attention, q length 1"))
        elif name == "reference":
            out.append(Variant(name, _make_reference, "fp32 attention_ref"))
    return out


def _make_naive(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    mask = causal_mask(c["S"], c["S"], c["device"]) if c["causal"] else None
    return lambda: naive_attention(c["q"], c["k"], c["v"], c["scale"], mask)


def _make_reference(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    return lambda: attention_ref(c["q"], c["k"], c["v"], c["causal"], c["scale"])


def _make_sdpa(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    return lambda: F.scaled_dot_product_attention(c["q"], c["k"], c["v"], is_causal=c["causal"], scale=c["scale"],
                                                  enable_gqa=True)


_FLEX: dict[str, Any] = {}


def _make_flex(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    torch._dynamo.reset()  # a fresh compile per shape (past the recompile limit flex falls back to eager)
    block_mask = None
    if c["causal"]:
        block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, B=None, H=None,
                                       Q_LEN=c["S"], KV_LEN=c["S"], device=c["device"])
    flex = _FLEX["fn"]
    return lambda: flex(c["q"], c["k"], c["v"], block_mask=block_mask, scale=c["scale"], enable_gqa=True)


def _make_ours(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from kernels.flash_attention import flash_attention

    return lambda: flash_attention(c["q"], c["k"], c["v"], causal=c["causal"], sm_scale=c["scale"])


def _library_prefill(name: str, fn: Callable, note: str) -> Variant:
    def make(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
        q, k, v = (c[n].transpose(1, 2) for n in ("q", "k", "v"))  # (B, S, H, D) views, stride(-1) == 1
        if name == "flash_attn":
            return lambda: fn(q, k, v, causal=c["causal"], softmax_scale=c["scale"]).transpose(1, 2)
        if name == "fa4":
            def fa4():
                out = fn(q, k, v, causal=c["causal"], softmax_scale=c["scale"])
                return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)  # some versions add the LSE
            return fa4
        return _flashinfer_prefill(fn, c)

    notes = {"flash_attn": "flash_attn_func (FA2)", "fa4": "flash_attn.cute (FA4)",
             "flashinfer": "single_prefill (B=1) / ragged batch prefill, NHD copies made untimed"}
    return Variant(name, make, f"{notes[name]}, {note}", unsupported=_half_only)


def _flashinfer_prefill(fi: Any, c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    B, Hq, S, D = c["q"].shape
    Hkv = c["k"].shape[1]
    q, k, v = (c[n].transpose(1, 2).contiguous() for n in ("q", "k", "v"))  # (B, S, H, D), untimed
    if B == 1:
        return lambda: fi.single_prefill_with_kv_cache(q[0], k[0], v[0], causal=c["causal"], sm_scale=c["scale"],
                                                       kv_layout="NHD").transpose(0, 1)[None]
    indptr = torch.arange(B + 1, dtype=torch.int32, device=c["device"]) * S
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=c["device"])
    wrapper = fi.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
    wrapper.plan(indptr, indptr, Hq, Hkv, D, causal=c["causal"], sm_scale=c["scale"], q_data_type=c["dtype"])
    qp, kp, vp = (t.view(B * S, t.shape[2], D) for t in (q, k, v))  # packed (B*S, H, D)
    return lambda: wrapper.run(qp, kp, vp).view(B, S, Hq, D).transpose(1, 2)


# Decode variants return (B, Hq, 1, D): the (B, Hq, D) output as a one-row prefill for the check.


def _make_ours_decode(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from kernels.flash_decode import flash_decode

    q = c["q"][:, :, 0]  # (B, Hq, D)
    return lambda: flash_decode(q, c["k"], c["v"], c["seq_lens"], c["scale"])[:, :, None]


def _make_ours_paged(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    from kernels.flash_decode import paged_flash_decode

    q = c["q"][:, :, 0]
    return lambda: paged_flash_decode(q, c["k_paged"], c["v_paged"], c["block_table"], c["seq_lens"],
                                      c["scale"])[:, :, None]


def _make_sdpa_decode(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    return lambda: F.scaled_dot_product_attention(c["q"], c["k"], c["v"], scale=c["scale"], enable_gqa=True)


def _make_flashinfer_decode(c: dict[str, Any]) -> Callable[[], torch.Tensor]:
    import flashinfer

    B, Hq, _, D = c["q"].shape
    Hkv, L, bs = c["k"].shape[1], c["L"], c["k_paged"].shape[1]
    nblk = c["block_table"].shape[1]
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=c["device"])
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    indptr = torch.arange(B + 1, dtype=torch.int32, device=c["device"]) * nblk
    last = torch.full((B,), L - (nblk - 1) * bs, dtype=torch.int32, device=c["device"])
    wrapper.plan(indptr, c["block_table"].flatten(), last, Hq, Hkv, D, bs, q_data_type=c["dtype"],
                 sm_scale=c["scale"])
    q = c["q"][:, :, 0]
    return lambda: wrapper.run(q, (c["k_paged"], c["v_paged"]))[:, :, None]


# ----------------------------------------------------------------------------
# One case: check, then time, every variant
# ----------------------------------------------------------------------------


def _status(e: BaseException) -> str:
    """WRONG / FAILED (common.failure_status), except what a sweep expects: a case too big for the
    device (naive attention at 16K materialises its scores) and an SDPA backend refusing a case."""
    if isinstance(e, torch.OutOfMemoryError):
        return "skipped: out of memory"
    if isinstance(e, RuntimeError) and "No available kernel" in str(e):
        return "skipped: SDPA backend cannot run this case"
    return common.failure_status(e)



def run_case(case: dict[str, Any], variants: list[Variant], checker: ReferenceCheck, warmup: int,
             iters: int) -> list[dict[str, Any]]:
    """Rows for one case: status, check errors, first-call time and p10/p50/p90 us of each variant.

    `case` holds the inputs under q/k/v (decode: q (B, Hq, 1, D), k/v the caches) plus the
    row fields (sweep, S or L, B, ...). The first call is the check; only a variant that
    passes it is warmed up and timed.
    """
    device = case["device"]
    fields = {k: case[k] for k in ("sweep", "mask", "S", "L", "B", "Hq", "Hkv", "D") if k in case}
    fields["dtype"] = common.dtype_name(case["dtype"])
    rows = []
    for v in variants:
        row = {**fields, "variant": v.name, "status": "ok", "note": v.note}
        rows.append(row)
        reason = v.note if v.make is None else (v.unsupported(case) if v.unsupported else "")
        if reason:
            row["status"], row["note"] = reason, ""
            continue
        label = f"{v.name} {fields['dtype']} " + " ".join(f"{k}={case[k]}" for k in ("mask", "S", "L", "B")
                                                          if k in case)
        caught: list[warnings.WarningMessage] = []
        try:
            with v.ctx() if v.ctx else contextlib.nullcontext():
                fn = v.make(case)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t0 = time.perf_counter()
                    got = fn()
                    common.sync(device)
                row["first_call_s"] = time.perf_counter() - t0
                row.update(checker.check(got, label))
                del got
                w, n = (0, 3) if v.interpreted else (warmup, iters)
                t = common.time_fn(fn, device, warmup=w, iters=n, flush_l2=True)
        except Exception as e:  # noqa: BLE001 - one broken variant must not end the sweep
            row["status"] = _status(e)
            if row["status"].startswith("skipped: SDPA"):
                why = [str(m.message).strip().splitlines()[0] for m in caught if str(m.message).strip()]
                row["status"] += (": " + "; ".join(why[:2]))[:300] if why else ""
            if common.is_cuda(device):
                torch.cuda.empty_cache()
            continue
        row.update({"p10_us": t["p10"], "p50_us": t["p50"], "p90_us": t["p90"]})
        if case["sweep"] == "decode" and common.is_cuda(device):
            # The same call replayed from a CUDA graph, as it runs inside a graphed decode step.
            try:
                with v.ctx() if v.ctx else contextlib.nullcontext():
                    row["graph_p50_us"] = common.time_cuda_graph(fn, warmup, iters, device=device)["p50"]
            except Exception as e:  # noqa: BLE001 - some variants cannot be captured; say so
                row["graph_note"] = f"not capturable: {type(e).__name__}"
                torch.cuda.synchronize()
    return rows


def mark_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mark the fastest ok variant of one case (best='*'); ours vs the fastest alternative."""
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        r["best"] = ""
        r["ours_x"] = None
    verdict: dict[str, Any] = {"best": None, "ours": None, "alt": None, "speedup": None}
    if not ok:
        return verdict
    best = min(ok, key=lambda r: r["p50_us"])
    best["best"] = "*"
    verdict["best"] = best
    ours = [r for r in ok if r["variant"] in OURS]
    alts = [r for r in ok if r["variant"] not in OURS + NOT_ALTERNATIVES]
    if ours and alts:
        o = min(ours, key=lambda r: r["p50_us"])
        a = min(alts, key=lambda r: r["p50_us"])
        verdict.update(ours=o, alt=a, speedup=a["p50_us"] / o["p50_us"])
        for r in rows:
            r["ours_x"] = verdict["speedup"]
    return verdict


# ----------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """What every case of this run shares."""
    device: str
    dtype: torch.dtype
    Hq: int
    Hkv: int
    D: int
    masks: list[bool]
    warmup: int
    iters: int
    seed: int
    max_check_scores: int
    page_size: int
    matmul_tflops: float
    copy_gbps: float


def prefill_case(s: Setup, sweep: str, S: int, B: int, causal: bool, dtype: torch.dtype | None = None,
                 heads: tuple[int, int, int] | None = None) -> dict[str, Any]:
    dtype = dtype or s.dtype
    Hq, Hkv, D = heads or (s.Hq, s.Hkv, s.D)
    case = {"sweep": sweep, "mask": "causal" if causal else "noncausal", "S": S, "B": B, "Hq": Hq, "Hkv": Hkv,
            "D": D, "dtype": dtype, "device": s.device, "causal": causal, "scale": 1.0 / math.sqrt(D)}
    case.update(make_inputs(B, Hq, Hkv, S, D, dtype, s.device, s.seed))
    return case


def run_prefill(s: Setup, sweep: str, S: int, B: int, causal: bool, variants: list[Variant],
                **kw: Any) -> list[dict[str, Any]]:
    case = prefill_case(s, sweep, S, B, causal, **kw)
    checker = ReferenceCheck(case["q"], case["k"], case["v"], causal, case["scale"], s.max_check_scores)
    rows = run_case(case, variants, checker, s.warmup, s.iters)
    flops = attention_flops(B, case["Hq"], S, S, case["D"], causal)
    for r in rows:
        r["flops"] = flops
        r["check"] = "sampled" if checker.sampled else "full"
        if r["status"] == "ok":
            r["tflops"] = flops / r["p50_us"] / 1e6
            r["pct_matmul"] = 100 * r["tflops"] / s.matmul_tflops
    mark_best(rows)
    return rows


def run_decode(s: Setup, L: int, B: int, variants: list[Variant], sweep: str = "decode",
               dtype: torch.dtype | None = None, heads: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    dtype = dtype or s.dtype
    Hq, Hkv, D = heads or (s.Hq, s.Hkv, s.D)
    raw = make_decode_inputs(B, Hq, Hkv, L, D, dtype, s.device, s.seed)
    case = {"sweep": sweep, "L": L, "B": B, "Hq": Hq, "Hkv": Hkv, "D": D, "dtype": dtype, "device": s.device,
            "causal": False, "scale": 1.0 / math.sqrt(D), "q": raw["q"][:, :, None],  # (B, Hq, 1, D)
            "k": raw["k_cache"], "v": raw["v_cache"], "seq_lens": raw["seq_lens"]}
    if any(v.make is not None and v.name in ("ours_paged", "flashinfer")
           and not (v.unsupported and v.unsupported(case)) for v in variants):
        raw["k_paged"], raw["v_paged"], raw["block_table"] = paged_kv(raw["k_cache"], raw["v_cache"],
                                                                     s.page_size, s.seed + 1)
        case.update(k_paged=raw["k_paged"], v_paged=raw["v_paged"], block_table=raw["block_table"])
    checker = ReferenceCheck(case["q"], case["k"], case["v"], False, case["scale"], s.max_check_scores)
    rows = run_case(case, variants, checker, s.warmup, s.iters)
    nbytes = decode_kv_bytes(B, Hkv, L, D, dtype)
    for r in rows:
        r["kv_bytes"] = nbytes
        if r["status"] == "ok":
            r["gbps"] = nbytes / r["p50_us"] / 1e3
            r["pct_copy"] = 100 * r["gbps"] / s.copy_gbps
            if r.get("graph_p50_us"):
                r["graph_gbps"] = nbytes / r["graph_p50_us"] / 1e3
                r["graph_pct_copy"] = 100 * r["graph_gbps"] / s.copy_gbps
    mark_best(rows)
    return rows


# ----------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------


def _flop_unit(cpu: bool) -> tuple[str, float]:
    """Rate unit and its factor from TFLOP/s: CPU figures are GFLOP/s."""
    return ("GFLOP/s", 1e3) if cpu else ("TFLOP/s", 1.0)


def _cell(r: dict[str, Any], decode: bool, scale: float) -> str:
    if r["status"] != "ok":
        return "!! " + r["status"].split(":")[0] + " !!"  # WRONG / FAILED, loud
    if decode:
        return f"{common.fmt(r['p50_us'])}us {common.fmt(r['pct_copy'])}%{r['best']}"
    return f"{common.fmt(r['tflops'] * scale)} ({common.fmt(r['p50_us'] / 1e3)}ms){r['best']}"


def report(rows: list[dict[str, Any]], s: Setup, cpu: bool) -> None:
    """Print a pivot per (sweep, mask), the first-call times, the notes and every WRONG / FAILED."""
    unit, scale = _flop_unit(cpu)
    tag = "  [CPU run: CPU figures]" if cpu else ""
    for sweep in ("seq", "batch", "interpreter", "decode", "interpreter-decode"):
        sel = [r for r in rows if r["sweep"] == sweep]
        if not sel:
            continue
        decode = sweep.endswith("decode")
        variants = list(dict.fromkeys(r["variant"] for r in sel if common.attempted(r["status"])))
        for mask in dict.fromkeys(r.get("mask") for r in sel):
            part = [r for r in sel if r.get("mask") == mask]
            keys = ("L", "B") if decode else ("S", "B")
            table = []
            for key in dict.fromkeys(tuple(r[k] for k in keys) for r in part):
                cell_rows = [r for r in part if tuple(r[k] for k in keys) == key]
                line: dict[str, Any] = dict(zip(keys, key))
                line.update({r["variant"]: _cell(r, decode, scale) for r in cell_rows if r["variant"] in variants})
                best = next((r for r in cell_rows if r["best"]), None)
                if decode:
                    line["best GB/s"] = best["gbps"] if best else None
                else:
                    line[f"best {unit}"] = best["tflops"] * scale if best else None
                    line["% matmul"] = best["pct_matmul"] if best else None
                line["ours x"] = cell_rows[0]["ours_x"] if cell_rows else None
                table.append(line)
            cols = list(keys) + variants + (["best GB/s"] if decode else [f"best {unit}", "% matmul"]) + ["ours x"]
            dt = sel[0]["dtype"]
            shape = f"Hq={sel[0]['Hq']} Hkv={sel[0]['Hkv']} D={sel[0]['D']} {dt}"
            if decode:
                title = (f"\n{sweep}, {shape}: p50 latency and % of copy bandwidth ({s.copy_gbps:,.0f} GB/s)"
                         f" of the KV bytes read; * fastest{tag}")
            else:
                title = (f"\n{sweep} sweep, {mask}, {shape}: {unit} (p50 time); * fastest; matmul ceiling "
                         f"{s.matmul_tflops * scale:,.1f} {unit}{tag}")
            if sweep.startswith("interpreter"):
                title += "\n  (Triton's interpreter on a CPU: a correctness run, the times are not kernel figures)"
            common.print_table(table, cols, title=title)
    graphed = [r for r in rows if r["sweep"] == "decode" and (r.get("graph_p50_us") or r.get("graph_note"))]
    if graphed:
        table = []
        for key in dict.fromkeys((r["L"], r["B"]) for r in graphed):
            line: dict[str, Any] = {"L": key[0], "B": key[1]}
            for r in graphed:
                if (r["L"], r["B"]) == key:
                    line[r["variant"]] = (f"{common.fmt(r['graph_p50_us'])}us {common.fmt(r['graph_pct_copy'])}%"
                                          if r.get("graph_p50_us") else r["graph_note"])
            table.append(line)
        cols = ["L", "B"] + list(dict.fromkeys(r["variant"] for r in graphed))
        common.print_table(table, cols, title=f"\ndecode, each call replayed from a CUDA graph (no launch cost): "
                           f"p50 and % of copy bandwidth ({s.copy_gbps:,.0f} GB/s){tag}")
    print("\nours x = fastest alternative's p50 / ours' p50 (> 1: ours is faster); the fp32 reference is not an "
          "alternative.")
    firsts = [r for r in rows if r["status"] == "ok" and r["variant"] in ("ours", "ours_paged", "flex")]
    if firsts:
        common.print_table(
            [{**r, "what": "compile" if r["variant"] == "flex" else "autotune",
              "case": " ".join(f"{k}={r[k]}" for k in ("mask", "S", "L", "B") if k in r)} for r in firsts],
            ["sweep", "variant", "case", "what", ("first_call_s", "first call, s")],
            title="\nFirst calls (autotune / compile, untimed; a reused autotune key costs ~0)")
    notes: dict[tuple[str, str], int] = {}
    for r in rows:
        note = r["note"] if common.attempted(r["status"]) else r["status"]
        if note:
            notes[(r["variant"], note)] = notes.get((r["variant"], note), 0) + 1
    if notes:
        print("\nVariants:")
        for (variant, note), n in notes.items():
            print(f"  {variant}: {note}" + (f"  ({n} cases)" if n > 1 else ""))
    sampled = [r for r in rows if r.get("check") == "sampled" and r["status"] == "ok"]
    if sampled:
        print(f"\nnote: {len(sampled)} rows were checked on the first and last (batch, KV head) pairs only "
              "(see --max_check_scores)")
    problems = [r for r in rows if common.is_failure(r["status"])]
    if problems:
        print("\n" + "!" * 78 + f"\n{len(problems)} variant runs are WRONG or FAILED (not timed):")
        for r in problems:
            case = " ".join(f"{k}={r[k]}" for k in ("sweep", "mask", "S", "L", "B") if k in r)
            print(f"  {r['variant']} {case}: {r['status']}")
        print("!" * 78)


def summary_records(rows: list[dict[str, Any]], s: Setup, cpu: bool, tag: str) -> list[dict[str, Any]]:
    """summary.json records: ceilings, then one per timed (variant, case) and per first call."""
    unit, scale = _flop_unit(cpu)
    base = {"cpu_run": cpu}
    out = [{"name": f"flash_attention/{tag}matmul_ceiling {unit}", "value": s.matmul_tflops * scale, "unit": unit,
            "dtype": common.dtype_name(s.dtype), **base},
           {"name": "flash_attention/copy_bandwidth GB/s", "value": s.copy_gbps, "unit": "GB/s", **base}]
    for r in rows:
        if r["status"] != "ok" or r["sweep"].startswith("interpreter"):
            continue
        timing = {k: r[k] for k in ("p10_us", "p50_us", "p90_us", "B", "dtype", "Hq", "Hkv", "D")}
        if r["sweep"] == "decode":
            case = f"flash_attention/{tag}decode/{r['variant']}/L={r['L']},B={r['B']}"
            out.append({"name": f"{case} us", "value": r["p50_us"], "unit": "us", **timing, **base})
            out.append({"name": f"{case} GB/s", "value": r["gbps"], "unit": "GB/s", "pct_of_copy": r["pct_copy"],
                        **timing, **base})
            if r.get("graph_p50_us"):
                out.append({"name": f"{case} graph GB/s", "value": r["graph_gbps"], "unit": "GB/s",
                            "pct_of_copy": r["graph_pct_copy"], "graph_p50_us": r["graph_p50_us"], **base})
        else:
            shape = f"S={r['S']}" + (f",B={r['B']}" if r["sweep"] == "batch" else "")
            case = f"flash_attention/{tag}{r['variant']}/{r['mask']}/{shape}"
            out.append({"name": f"{case} {unit}", "value": r["tflops"] * scale, "unit": unit,
                        "pct_of_matmul": r["pct_matmul"], "max_abs_err": r["max_abs_err"], **timing, **base})
        if r["variant"] in ("ours", "ours_paged", "flex") and "first_call_s" in r:
            what = "compile" if r["variant"] == "flex" else "autotune"
            out.append({"name": f"{case} {what} s", "value": r["first_call_s"], "unit": "s", **base})
    wrong = [r for r in rows if common.is_failure(r["status"])]
    out.append({"name": f"flash_attention/{tag}wrong_or_failed", "value": len(wrong), "unit": "variant runs",
                "which": sorted({r["variant"] for r in wrong}), **base})
    return out


def plot(out_dir: Path, rows: list[dict[str, Any]], s: Setup, cpu: bool, title: str) -> list[Path]:
    unit, scale = _flop_unit(cpu)
    paths = []

    def series(sel: list[dict[str, Any]], x: str, y: str, factor: float = 1.0) -> dict:
        out = {}
        for v in dict.fromkeys(r["variant"] for r in sel):
            pts = [r for r in sel if r["variant"] == v and r["status"] == "ok"]
            if pts:
                out[v] = ([r[x] for r in pts], [r[y] * factor for r in pts])
        return out

    ceiling = {f"matmul {s.matmul_tflops * scale:,.1f} {unit}": s.matmul_tflops * scale}
    for sweep, x in (("seq", "S"), ("batch", "B")):
        sel = [r for r in rows if r["sweep"] == sweep]
        if not sel:
            continue
        panels = [{"title": f"{sweep} sweep, {mask}", "xlabel": f"{x}" + (" (B = tokens / S)" if x == "S" else ""),
                   "ylabel": f"{unit} (p50)", "logx": True,
                   "series": series([r for r in sel if r["mask"] == mask], x, "tflops", scale), "hlines": ceiling}
                  for mask in dict.fromkeys(r["mask"] for r in sel)]
        paths.append(common.plot_panels(out_dir / f"flash_attention_{sweep}.png", panels, title=title))
    sel = [r for r in rows if r["sweep"] == "decode"]
    if sel:
        b_max, l_max = max(r["B"] for r in sel), max(r["L"] for r in sel)
        by_l = [r for r in sel if r["B"] == b_max]
        by_b = [r for r in sel if r["L"] == l_max]
        copy = {f"copy {s.copy_gbps:,.0f} GB/s": 100.0}
        panels = [
            {"title": f"decode latency, B={b_max}", "xlabel": "KV length L", "ylabel": "us (p50)", "logx": True,
             "logy": True, "series": series(by_l, "L", "p50_us")},
            {"title": f"decode bandwidth, B={b_max}", "xlabel": "KV length L", "ylabel": "% of copy bandwidth",
             "logx": True, "series": series(by_l, "L", "pct_copy"), "hlines": copy},
            {"title": f"decode latency, L={l_max}", "xlabel": "batch B", "ylabel": "us (p50)", "logx": True,
             "logy": True, "series": series(by_b, "B", "p50_us")},
            {"title": f"decode bandwidth, L={l_max}", "xlabel": "batch B", "ylabel": "% of copy bandwidth",
             "logx": True, "series": series(by_b, "B", "pct_copy"), "hlines": copy},
        ]
        paths.append(common.plot_panels(out_dir / "flash_attention_decode.png", panels, title=title))
    return paths


def profile(out_dir: Path, s: Setup, rows: list[dict[str, Any]], variants: list[Variant], cpu: bool) -> Path | None:
    """torch.profiler over the ok variants of one seq-sweep case: a chrome trace and the top kernels."""
    seq = [r for r in rows if r["sweep"] == "seq" and r["status"] == "ok"]
    if not seq:
        print("\n--profile: no seq-sweep variant ran ok; nothing to profile")
        return None
    S = min({r["S"] for r in seq}, key=lambda n: abs(math.log2(n / 4096)))
    mask = "causal" if any(r["mask"] == "causal" for r in seq) else "noncausal"
    ok = {r["variant"] for r in seq if r["S"] == S and r["mask"] == mask}
    B = next(r["B"] for r in seq if r["S"] == S)
    case = prefill_case(s, "seq", S, B, mask == "causal")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([] if cpu else [torch.profiler.ProfilerActivity.CUDA])
    with torch.profiler.profile(activities=activities) as prof:
        for v in variants:
            if v.name not in ok:
                continue
            with v.ctx() if v.ctx else contextlib.nullcontext():
                fn = v.make(case)
                fn()  # compiled / autotuned already in this process; settle outside the label
                common.sync(s.device)
                with torch.profiler.record_function(f"variant {v.name}"):
                    for _ in range(3):
                        fn()
                    common.sync(s.device)
    path = out_dir / f"flash_attention_profile_{mask}_S{S}.json"
    prof.export_chrome_trace(str(path))
    sort = "self_cpu_time_total" if cpu else "self_device_time_total"
    print(f"\nProfile of {mask} S={S} B={B} ({', '.join(sorted(ok))}, 3 calls each), top kernels by "
          f"{'CPU' if cpu else 'device'} time; trace: {path}")
    print(prof.key_averages().table(sort_by=sort, row_limit=15))
    return path


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """The whole benchmark: check and time every variant of every sweep, write the results, then
    exit 1 if any variant was WRONG or FAILED (bench.common.exit_on_failures)."""
    device, cpu, quick, preset, warmup, iters = common.sweep_setup(opts.quick, opts.warmup, opts.iters,
                                                                   QUICK_CPU, QUICK_GPU, FULL)
    shape = CPU_SHAPE if cpu and quick else GPU_SHAPE
    dtype = common.parse_dtype(opts.dtype or shape["dtype"])
    Hq, Hkv, D = (opts.heads or shape["heads"], opts.kv_heads or shape["kv_heads"],
                  opts.head_dim or shape["head_dim"])
    if Hkv <= 0 or Hq % Hkv:
        raise app.UsageError(f"--kv_heads ({Hkv}) must divide --heads ({Hq})")
    names = list(opts.variants or ALL_VARIANTS)
    if not opts.variants and not cpu:
        names = [n for n in names if n != "reference"]  # its fp32 S^2 scores do not fit at 16K
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; expected some of {ALL_VARIANTS}")
    sweeps = opts.sweeps
    if any(w not in SWEEPS for w in sweeps):
        raise app.UsageError(f"--sweeps: expected some of {SWEEPS}, got {sweeps}")
    masks = {"both": [True, False], "true": [True], "false": [False]}[opts.causal]

    name = common.device_name()
    out_dir = common.results_dir("flash_attention")
    print(f"flash_attention on {name}, {common.today()}, torch {torch.__version__}, "
          f"triton {common.versions()['triton']}")
    if cpu:
        print("CPU run: CPU figures (GFLOP/s, CPU microseconds), "
              + ("small shapes; " if quick else "") + "a smoke test of the harness, not a GPU measurement.")
        print("  ours: " + ("Triton's interpreter on one tiny bf16 case (TRITON_INTERPRET=1)" if interpreting()
                            else "needs a GPU or TRITON_INTERPRET=1 (set before the run)"))
    matmul = common.measure_matmul_tflops(device, dtype)
    copy_gbps = common.measure_copy_bandwidth(device)
    unit, scale = _flop_unit(cpu)
    print(f"matmul ceiling ({'8192' if not cpu else '512'}^3 {common.dtype_name(dtype)}): "
          f"{matmul * scale:,.1f} {unit}; copy bandwidth ({'1 GiB' if not cpu else '64 MiB'}, read + write): "
          f"{copy_gbps:,.0f} GB/s")
    s = Setup(device, dtype, Hq, Hkv, D, masks, warmup, iters, opts.seed,
              opts.max_check_scores or (1 << 28 if cpu else 1 << 34), opts.page_size, matmul, copy_gbps)

    explicit = bool(opts.variants)
    prefill_variants = build_prefill_variants(names, device, explicit)
    decode_variants = build_decode_variants(names, device, explicit)
    tokens = opts.tokens or preset.get("tokens")
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    if "seq" in sweeps and prefill_variants:
        for S in common.int_list(opts.seq_lens, preset["seq_lens"]):
            B = max(1, tokens // S) if tokens else preset["seq_batch"]
            for causal in masks:
                rows += run_prefill(s, "seq", S, B, causal, prefill_variants)
                print(f"  done seq S={S} B={B} {'causal' if causal else 'noncausal'}", flush=True)
    if "batch" in sweeps and prefill_variants:
        S = opts.batch_seq_len or preset["batch_seq_len"]
        for B in common.int_list(opts.batches, preset["batches"]):
            for causal in masks:
                rows += run_prefill(s, "batch", S, B, causal, prefill_variants)
                print(f"  done batch S={S} B={B} {'causal' if causal else 'noncausal'}", flush=True)
    if "decode" in sweeps and decode_variants:
        for L in common.int_list(opts.kv_lens, preset["kv_lens"]):
            for B in common.int_list(opts.decode_batches, preset["decode_batches"]):
                rows += run_decode(s, L, B, decode_variants)
                print(f"  done decode L={L} B={B}", flush=True)
    if cpu and interpreting():
        tiny = dict(dtype=INTERP_CASE["dtype"], heads=(4, 2, 64))
        if "ours" in names and ("seq" in sweeps or "batch" in sweeps):
            for causal in masks:
                rows += run_prefill(s, "interpreter", INTERP_CASE["S"], INTERP_CASE["B"], causal, prefill_variants,
                                    **tiny)
        if any(n in names for n in OURS) and "decode" in sweeps:
            rows += run_decode(s, INTERP_CASE["L"], INTERP_CASE["decode_B"], decode_variants,
                               sweep="interpreter-decode", **tiny)
    print(f"  sweeps took {time.perf_counter() - t_start:.1f} s", flush=True)

    report(rows, s, cpu)
    default_shape = (dtype, Hq, Hkv, D) == (torch.bfloat16, 32, 8, 128)
    tag = "" if default_shape else f"{common.dtype_name(dtype)}-h{Hq}kv{Hkv}d{D}/"
    paths = common.write_results(out_dir, "flash_attention", rows, summary_records(rows, s, cpu, tag))
    pngs = plot(out_dir, rows, s, cpu, f"{name}, {common.today()}" + (" (CPU run)" if cpu else "")) \
        if opts.plot else []
    if opts.profile:
        trace = profile(out_dir, s, rows, prefill_variants, cpu)
        pngs += [trace] if trace else []
    print(f"\nresults: {out_dir}  ({', '.join(p.name for p in list(paths.values()) + pngs)})")
    common.exit_on_failures("bench.flash_attention", [
        f"{r['variant']} " + " ".join(f"{k}={r[k]}" for k in ("sweep", "mask", "S", "L", "B") if k in r)
        for r in rows if common.is_failure(r["status"])])


if __name__ == "__main__":
    app.run(main)
