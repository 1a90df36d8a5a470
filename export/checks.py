"""The parity gates every export shares: what is compared, against which tolerance, and why.

The reference is always eager PyTorch (our model with its StaticKVCache). Two views:
  free-running greedy (export/kv_step.py greedy_with_step): tokens and per-step last
      logits; exact for fp32, where the export must reproduce eager's choices;
  teacher-forced (forced_logits): one prefill over prompt + eager's tokens, so every
      row is conditioned on the same prefix; the fair view of a lossy (INT8) export,
      whose free run may diverge once and then compare unrelated contexts.
Gates are written `not err <= tol` so a NaN fails.
"""

from __future__ import annotations

import torch

from export.common import ExportError

# A reference whose greedy run repeats one or two tokens lets a broken export "agree"
# by luck (the 0.02-init tiny model echoed its last prompt token): demand variety.
MIN_DISTINCT = 5

# fp32 export vs eager fp32, max |logits diff| over the greedy steps: the same math in
# other kernels (ORT's MatMul/Softmax, Inductor's fused C++) with another summation
# order. Measured on the varied tiny model (|logits| <= 2.8): onnxruntime 2.7e-6,
# AOTInductor 2.1e-6. Faults move one step's logits by ~1 (measured: last layer dropped
# 1.55 on the prefill row, a decode at position + 1 1.06), 10^4 x the tolerance.
FP32_ATOL = 1e-4

# Dynamic INT8 in onnxruntime (7-bit per-channel weights, per-call uint8 activations),
# teacher-forced rows: measured max relative logits error 0.126 (median 0.066) and
# top-1 agreement 16/16 on the varied tiny model. Bounds at about 2x the measurement;
# the saturating 8-bit-weight variant on this AVX2 CPU measured 0.50 and 62%.
INT8_MAX_REL = 0.25
INT8_MIN_TOP1 = 0.9


def distinct_tokens(tokens: list[int]) -> int:
    """How many different ids a greedy run produced."""
    return len(set(tokens))


def max_abs_diff(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max |got - want| over paired logits tensors (NaN if any is NaN)."""
    assert len(got) == len(want), f"{len(got)} logits vs {len(want)} reference"
    return float(torch.stack([(torch.as_tensor(a).detach().float() - b.float()).abs().max()
                              for a, b in zip(got, want)]).max())


def forced_logits(step, prompt: list[int], tokens: list[int], k_cache, v_cache) -> torch.Tensor:
    """Logits (N, vocab) predicting tokens[0..N-1] from one prefill of prompt + tokens[:-1].

    `step(ids (1, T), pos (T,), k, v) -> (logits (1, T, vocab), k, v)`, any array type.
    """
    ids = torch.tensor([prompt + tokens[:-1]])
    logits, _, _ = step(ids, torch.arange(ids.shape[1]), k_cache, v_cache)
    return torch.as_tensor(logits)[0, len(prompt) - 1:].float()  # (N, vocab)


def forced_agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max per-row relative L2 error, top-1 agreement fraction) of (N, vocab) logits."""
    rel = (got - want).norm(dim=-1) / want.norm(dim=-1)
    top1 = (got.argmax(-1) == want.argmax(-1)).float().mean()
    return float(rel.max()), float(top1)


def check_fp32(what: str, got: list[int], ref: list[int], err: float) -> None:
    """Raise ExportError unless fp32 greedy tokens equal eager's and logits are within FP32_ATOL."""
    if got != ref or not err <= FP32_ATOL:
        raise ExportError(f"{what} fp32 differs from eager: tokens {got} vs {ref}, max |logits diff| "
                          f"{err:.2e} (tol {FP32_ATOL:.0e})")


def check_int8(what: str, rel: float, top1: float) -> None:
    """Raise ExportError unless teacher-forced INT8 logits are within INT8_MAX_REL / INT8_MIN_TOP1."""
    if not (rel <= INT8_MAX_REL and top1 >= INT8_MIN_TOP1):
        raise ExportError(f"{what} int8 too far from eager (teacher-forced): max rel logits err "
                          f"{rel:.3f} (tol {INT8_MAX_REL}), top-1 agreement {top1:.0%} "
                          f"(min {INT8_MIN_TOP1:.0%})")
