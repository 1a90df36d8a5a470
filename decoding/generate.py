"""The plain generation loop: prefill the prompt, then decode one token at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from decoding.sampling import sample
from decoding.stopping import stop_reason


class ContextLengthError(ValueError):
    """Prompt plus requested new tokens do not fit the model's context."""


class NonFiniteLogitsError(ArithmeticError):
    """The model produced NaN/Inf logits (bad weights or an overflow); names the first step and row."""


@dataclass
class GenerationResult:
    """Output of `generate`: ids (prompt + new, per row) and timings in seconds."""

    tokens: torch.Tensor  # (B, T_prompt + n_new) long: prompt then generated ids
    new_ids: list  # per row, the generated ids (ending at its eos_id when given)
    prefill_s: float  # time to first token: the prompt forward + first sample
    decode_s: float  # time of the remaining n_new - 1 steps
    n_new: int  # new tokens produced per row (the loop's step count)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput per sequence (new tokens after the first / decode time)."""
        return (self.n_new - 1) / self.decode_s if self.n_new > 1 and self.decode_s > 0 else 0.0


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt_tensor(prompt_ids: Union[Sequence[int], torch.Tensor], max_new_tokens: int, device) -> torch.Tensor:
    """A prompt (list of ints, or (B, T) long tensor) as a (B, T) long tensor on device; T >= 1.
    Raises ValueError for an empty prompt or max_new_tokens < 1."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt[None]  # (1, T)
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt_ids must be a non-empty list or (B, T) tensor, got shape "
                         f"{tuple(prompt.shape)}")
    return prompt


def decode_loop(prefill: Callable[[], torch.Tensor], step: Callable[[torch.Tensor, int], torch.Tensor],
                prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, seed: Optional[int] = None, eos_id: Optional[int] = None,
                on_logits: Optional[Callable] = None) -> GenerationResult:
    """The one prefill/decode loop (generate and FastGenerator differ only in prefill and step).

    prompt (B, T) and max_new_tokens >= 1, as prompt_tensor checks them. prefill() -> logits
    (B, V) after the prompt; step(tokens, pos) -> logits (B, V) after feeding tokens[:, pos]
    (tokens (B, T + max_new_tokens) holds every earlier id). Each step
    samples with decoding.sample and stops by decoding.stopping.stop_reason: a row that emits
    eos_id keeps it and is done (later ids repeat it); the loop ends when every row is done.
    With eos_id the rows are checked on the host every step (a sync); without, never.
    on_logits(step, logits (B, V)) sees every step's logits.
    Non-finite logits never become tokens silently: a row's NaN/Inf step is recorded on the
    device (no sync), sampled as zeros, and the loop raises NonFiniteLogitsError naming the first
    such step (0 = the prefill's) and row once it ends.
    """
    B, T = prompt.shape
    device = prompt.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    stop_ids = () if eos_id is None else (eos_id,)
    kept: list[Optional[int]] = [None] * B  # new ids a row keeps, once it has stopped
    tokens = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :T] = prompt
    finite = torch.ones(max_new_tokens, B, dtype=torch.bool, device=device)  # per step and row
    _sync(device)
    t0 = time.perf_counter()
    logits = prefill()
    for i in range(max_new_tokens):
        n = i + 1
        if on_logits is not None:
            on_logits(i, logits)
        finite[i] = torch.isfinite(logits).all(dim=-1)
        if temperature > 0:  # multinomial refuses NaN rows; greedy argmax needs no copy (refused below)
            logits = logits.masked_fill(~finite[i, :, None], 0.0)
        tokens[:, T + i] = sample(logits, temperature, top_k, top_p, generator)  # (B,)
        if i == 0:
            _sync(device)
            t_first = time.perf_counter()
        if stop_ids:
            for r, tok in enumerate(tokens[:, T + i].tolist()):
                if kept[r] is None and stop_reason(tok, n, max_new_tokens, stop_ids) is not None:
                    kept[r] = n
            if all(k is not None for k in kept):
                break
        if n < max_new_tokens:
            logits = step(tokens, T + i)
    _sync(device)
    t_end = time.perf_counter()
    _raise_non_finite(finite[:n])
    tokens = tokens[:, :T + n]
    for r, k in enumerate(kept):
        if k is not None:
            tokens[r, T + k:] = tokens[r, T + k - 1]  # a stopped row repeats its stop token
    new_ids = [row[:k] for row, k in zip(tokens[:, T:].tolist(), kept)]
    return GenerationResult(tokens=tokens, new_ids=new_ids, prefill_s=t_first - t0, decode_s=t_end - t_first,
                            n_new=n)


def _raise_non_finite(finite: torch.Tensor) -> None:
    """Raise NonFiniteLogitsError for the first False of finite (steps, B), if any."""
    if bool(finite.all()):
        return
    step, row = (int(i) for i in (~finite).nonzero()[0])
    where = "the prefill (step 0)" if step == 0 else f"decode step {step}"
    raise NonFiniteLogitsError(f"the model produced NaN/Inf logits at {where}, row {row}: the weights hold "
                               "non-finite values or the activations overflow this dtype (try float32)")


@torch.inference_mode()
def generate(model, prompt_ids: Union[Sequence[int], torch.Tensor], max_new_tokens: int,
             temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             seed: Optional[int] = None, eos_id: Optional[int] = None,
             use_cache: bool = True) -> GenerationResult:
    """Generate max_new_tokens after prompt_ids (list of ints, or (B, T) long tensor).

    use_cache=True prefills a StaticKVCache then feeds one token per step;
    use_cache=False recomputes the whole sequence every step (the parity reference).
    Generation stops early once every row has produced eos_id (decode_loop).
    """
    device = next(model.parameters()).device
    prompt = prompt_tensor(prompt_ids, max_new_tokens, device)
    B, T = prompt.shape
    total = T + max_new_tokens
    limit = model.config.max_seq_len
    if total > limit:
        raise ContextLengthError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                                 f"exceeds the model context of {limit} tokens")

    def cached_step(tokens: torch.Tensor, pos: int) -> torch.Tensor:
        return model(tokens[:, pos:pos + 1], torch.tensor([pos], device=device))[:, -1]

    def full_step(tokens: torch.Tensor, pos: int) -> torch.Tensor:
        return model(tokens[:, :pos + 1])[:, -1]

    if not use_cache:
        return decode_loop(lambda: model(prompt)[:, -1], full_step, prompt, max_new_tokens, temperature,
                           top_k, top_p, seed, eos_id)
    model.setup_caches(max_batch_size=B, max_seq_len=total)
    try:
        return decode_loop(lambda: model(prompt, torch.arange(T, device=device))[:, -1], cached_step, prompt,
                           max_new_tokens, temperature, top_k, top_p, seed, eos_id)
    finally:
        model.remove_caches()
