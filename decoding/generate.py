"""The plain generation loop: prefill the prompt, then decode one token at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from decoding.sampling import sample


class ContextLengthError(ValueError):
    """Prompt plus requested new tokens do not fit the model's context."""


@dataclass
class GenerationResult:
    """Output of `generate`: ids (prompt + new, per row) and timings in seconds."""

    tokens: torch.Tensor  # (B, T_prompt + n_new) long: prompt then generated ids
    new_ids: list  # per row, the generated ids (stopping after eos_id when given)
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


@torch.inference_mode()
def generate(model, prompt_ids: Union[Sequence[int], torch.Tensor], max_new_tokens: int,
             temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             seed: Optional[int] = None, eos_id: Optional[int] = None,
             use_cache: bool = True) -> GenerationResult:
    """Generate max_new_tokens after prompt_ids (list of ints, or (B, T) long tensor).

    use_cache=True prefills a StaticKVCache then feeds one token per step;
    use_cache=False recomputes the whole sequence every step (the parity reference).
    Generation stops early once every row has produced eos_id.
    """
    device = next(model.parameters()).device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt[None]  # (1, T)
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt_ids must be a non-empty list or (B, T) tensor, got shape "
                         f"{tuple(prompt.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B, T = prompt.shape
    total = T + max_new_tokens
    limit = model.config.max_seq_len
    if total > limit:
        raise ContextLengthError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                                 f"exceeds the model context of {limit} tokens")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    tokens = torch.empty(B, total, dtype=torch.long, device=device)
    tokens[:, :T] = prompt
    done = torch.zeros(B, dtype=torch.bool, device=device)
    if use_cache:
        model.setup_caches(max_batch_size=B, max_seq_len=total)
    try:
        _sync(device)
        t0 = time.perf_counter()
        t_first = t0
        n = 0
        for i in range(max_new_tokens):
            cur = T + i
            if not use_cache:
                logits = model(tokens[:, :cur])[:, -1]  # (B, V)
            elif i == 0:
                logits = model(tokens[:, :T], torch.arange(T, device=device))[:, -1]
            else:
                pos = torch.tensor([cur - 1], device=device)
                logits = model(tokens[:, cur - 1:cur], pos)[:, -1]
            nxt = sample(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            tokens[:, cur] = nxt
            n = i + 1
            if i == 0:
                _sync(device)
                t_first = time.perf_counter()
            if eos_id is not None and bool(done.all()):
                break
        _sync(device)
        t_end = time.perf_counter()
    finally:
        if use_cache:
            model.remove_caches()
    tokens = tokens[:, :T + n]
    new_ids = []
    for row in tokens[:, T:].tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        new_ids.append(row)
    return GenerationResult(tokens=tokens, new_ids=new_ids, prefill_s=t_first - t0,
                            decode_s=t_end - t_first, n_new=n)
