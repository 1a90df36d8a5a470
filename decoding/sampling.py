"""Samplers: greedy, temperature, top-k and top-p (nucleus), seeded by torch.Generator.

Pure tensor functions; nothing here knows about the model.
"""

from __future__ import annotations

from typing import Optional

import torch

# The smallest temperature > 0. The logits are divided by it in fp32: a logit of 100 over 1e-5
# is 1e7, still finite, while over 1e-40 it is inf, and softmax then gives NaN. For greedy
# decoding ask for temperature 0.
MIN_TEMPERATURE = 1e-5


def _check(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    """Raise ValueError naming the bad argument, what was expected and what arrived."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p)


def check_sampling(temperature: float, top_k: Optional[int] = None, top_p: Optional[float] = None) -> None:
    """Raise ValueError naming the bad sampling argument: temperature 0 (greedy) or in
    [MIN_TEMPERATURE, inf), top_k a positive int or None, top_p in (0, 1] or None."""
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature < float("inf")):
        raise ValueError(f"temperature must be 0 (greedy) or a finite value >= {MIN_TEMPERATURE:g}, got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                    top_p: Optional[float] = None) -> torch.Tensor:
    """Probabilities (B, V) fp32 after temperature, then top-k, then top-p filtering."""
    _check(logits, temperature, top_k, top_p)
    if temperature == 0.0:
        raise ValueError("temperature 0 means greedy; there is no distribution to return")
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the top token stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick one token per row of logits (B, V); returns (B,) long.

    temperature 0 is greedy argmax (top_k/top_p ignored); otherwise sample from
    softmax(logits / temperature) restricted to the top_k tokens and to the smallest
    set whose mass reaches top_p. `generator` makes the draw reproducible.
    """
    _check(logits, temperature, top_k, top_p)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def batch_probs(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor,
                top_ps: torch.Tensor) -> torch.Tensor:
    """logits_to_probs for every row at once, each row with its own settings: probabilities (R, V) fp32.

    temperatures (R,) > 0; top_ks (R,) long, <= 0 or >= V meaning no top-k; top_ps (R,) in (0, 1],
    1 meaning no top-p. Row r equals logits_to_probs(logits[r:r+1], temperatures[r], top_k, top_p):
    the same filters in the same order (temperature, top-k by the k-th value, top-p on the sorted
    softmax, the top token always kept).
    """
    if logits.dim() != 2 or not (temperatures.shape == top_ks.shape == top_ps.shape == logits.shape[:1]):
        raise ValueError(f"batch_probs: logits (R, V) and (R,) settings, got {tuple(logits.shape)}, "
                         f"{tuple(temperatures.shape)}, {tuple(top_ks.shape)}, {tuple(top_ps.shape)}")
    V = logits.shape[-1]
    logits = logits.float() / temperatures.float()[:, None]
    k = torch.where((top_ks <= 0) | (top_ks >= V), V, top_ks).long()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (R, V)
    kth = sorted_logits.gather(-1, (k - 1)[:, None])  # (R, 1): the k-th largest value
    logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs_sorted = sorted_logits.softmax(-1)
    drop_sorted = (probs_sorted.cumsum(-1) - probs_sorted) >= top_ps.float()[:, None]
    drop_sorted &= (top_ps < 1.0)[:, None]
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf")).softmax(-1)


def sample_batch(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor,
                 top_ps: torch.Tensor) -> torch.Tensor:
    """One token per row (R,) long, every row sampled in one call with its own settings (see
    batch_probs); the global RNG draws, so rows with their own seed go through sample()."""
    return torch.multinomial(batch_probs(logits, temperatures, top_ks, top_ps), num_samples=1).squeeze(-1)
