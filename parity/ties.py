"""Greedy tokens against a reference's logits: the argmax, or a near tie within the dtype's band.

Two correct low-precision runs of one model (batched vs single, paged vs static cache, our
kernels vs Hugging Face's) round differently, so where two logits nearly tie they may pick
different greedy tokens, and their sequences part. The check: teacher-forced on the run's
own tokens, the reference's logits at every position must put the run's token at the row's
maximum, or below it by at most TIE_BAND[dtype] x max|logit| of that row. One band per
dtype, shared by bench.decode, bench.prefill and bench.serving.

Where the bands come from. One low-precision forward against the same weights in fp32
(`relative_logit_error` and `tie_gaps` below; CPU, 2026-11-26; the benches' CPU models over
6 seeds x 8 x 64 random tokens = 3072 positions each, the llama3-8b shapes over 2 x 64):

  model                                  one forward's error, max|dlogit| / max|logit|     bf16 flips:
                                         bf16 max (p99, median)     fp16 max              share, largest gap
  tiny, random (bench.decode, CPU)       0.044 (0.025, 0.012)       0.0048                2.2%, 0.015
  tiny at 32 layers                      0.050 (0.036, 0.018)       0.0074                3.3%, 0.024
  embedded shape, the recipe (serving)   0.043 (0.029, 0.014)       0.0059                2.3%, 0.023
  embedded weights (bench.prefill)       0.011 (0.008, 0.004)       0.0016                none, 0.004
  llama3-8b width + vocab, 2 layers      0.015 (0.015, 0.013)       0.0017                1.6%, 0.005
  llama3-8b vocab, dim 1024, 8 layers    0.023 (0.020, 0.016)       0.0021                7.0%, 0.013

A flip is a position where the low-precision argmax is not the fp32 argmax; its gap is how
far below the fp32 maximum that token sits, over max|logit|: what this check measures. A
correct run's flips are near ties by construction: its error must carry the fp32 winner
below the runner-up, and the gaps seen stay at about half the one-sided error. Two bf16
computations (what the benches compare: engine vs teacher-forced model) flip less: 1 of 768
generated tokens over 24 prompts, gap 0.004. On an H100 two bf16 computations of llama3-8b,
32 layers (ours vs Hugging Face, bench/results/h100-80gb-hbm3-2026-11-25/decode.json),
differ by 0.019-0.022 of max|logit|, which bounds a flip's gap by 0.044.

bf16 5e-2: 2.1x the largest flip gap measured (0.024) and above the 0.044 bound of the
32-layer GPU model. A real fault is far outside it: a prompt missing its first token puts a
run's tokens 0.20 to 1.4 x max|logit| below the maximum (24 prompts; parity/test_ties.py
plants it and asserts > 2x the band).
fp16 2e-2: its flips are rarer, their gaps at most 0.0012; 2e-2 is 2.7x its largest
one-sided error (0.0074), so a flip inside a correct run cannot reach it.
fp32 1e-4: fp32 runs differ only in summation order (~1e-6 relative, bench.prefill's
measurement); the band only absorbs exact ties.

The same band bounds two correct runs' logits directly: bench.decode checks its first decode
steps' max|logit - reference logit| / max|reference logit| (the table's measure) against it.
Ours against Hugging Face's, both bf16, measured 0.019-0.022 on llama3-8b (H100, above), inside
5e-2; fp16's one-sided error is at most 0.0074, inside 2e-2; fp32 (~1e-6) inside 1e-4.
"""

from __future__ import annotations

from typing import Sequence

import torch

TIE_BAND = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def tie_gaps(logits: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """(N,) fp32: (row max - row[token]) / max|row| for each row of logits (N, V) and its token."""
    rows = logits.detach().float().cpu()
    picked = rows.gather(-1, torch.as_tensor(list(tokens), dtype=torch.long)[:, None]).squeeze(-1)
    return (rows.amax(-1) - picked) / rows.abs().amax(-1).clamp_min(1e-30)


def check_near_ties(logits: torch.Tensor, tokens: Sequence[int], dtype: torch.dtype, what: str,
                    band: float | None = None) -> float:
    """Raise AssertionError naming `what` unless each token is its row's argmax or a near tie.

    logits: (N, V), the reference's logits for each of the N tokens (teacher-forced on the
    run's own tokens); dtype: the run's, which picks TIE_BAND unless `band` is given. A NaN
    gap (NaN or Inf logits) fails. Returns the largest gap (0.0: every token the argmax).
    """
    if logits.dim() != 2 or logits.shape[0] != len(tokens):
        raise AssertionError(f"{what}: logits {tuple(logits.shape)} for {len(tokens)} tokens")
    band = TIE_BAND[dtype] if band is None else band
    gaps = tie_gaps(logits, tokens)
    for i, gap in enumerate(gaps.tolist()):
        if not gap <= band:
            row = logits[i].float()
            raise AssertionError(f"{what}: position {i}: token {tokens[i]} is {gap:.3g} x max|logit| below the "
                                 f"reference's best ({int(row.argmax())}), over the {band:g} near-tie band of "
                                 f"{str(dtype).removeprefix('torch.')}")
    return float(gaps.max()) if len(gaps) else 0.0


@torch.inference_mode()
def relative_logit_error(model: torch.nn.Module, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) max|logits in dtype - fp32 logits| / max|fp32 logits| per position (the table above).

    `model` is fp32 and is returned to fp32; ids (B, T) on its device.
    """
    ref = model(ids).float()  # (B, T, V)
    try:
        low = model.to(dtype)(ids).float()
    finally:
        model.float()
    return (low - ref).abs().amax(-1) / ref.abs().amax(-1)
