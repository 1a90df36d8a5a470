"""The dataclasses that cross the scheduler/runner boundary: ids and ints, never tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class NewRequestData:
    """Sent once, when the runner first sees a request: how to sample it."""

    request_id: str
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    seed: Optional[int]
    logprobs: Optional[int] = None  # SamplingParams.logprobs


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: feed token_ids at positions start_pos.. and,
    when `sample`, pick the next token from the last one's logits."""

    request_id: str
    token_ids: list[int]  # the num_new tokens to compute this step
    start_pos: int  # = num_computed_tokens before the step
    block_ids: list[int]  # the request's block table (covers start_pos + len(token_ids) tokens)
    sample: bool  # the chunk reaches the last known token (a partial prefill samples nothing)
    # Speculative decoding (scheduler/speculative.py): proposed tokens fed after the last known one
    # (the tail of token_ids); the runner verifies them from the logits at every fed position.
    draft_token_ids: tuple = ()


@dataclass
class SchedulerOutput:
    """What execute() needs for one step."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    new_requests: list[NewRequestData] = field(default_factory=list)
    finished_request_ids: list[str] = field(default_factory=list)  # runner drops their state
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) copy-on-write
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)


@dataclass
class ModelRunnerOutput:
    """What update_from_output needs: the token sampled for each request that sampled, and
    the requests whose own sampling raised (request id -> message; they sampled nothing)."""

    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # Requests that asked for logprobs: (sampled token's logprob, [(id, logprob)] of the top k).
    logprobs: dict[str, tuple[float, list[tuple[int, float]]]] = field(default_factory=dict)
    # Speculating requests: the accepted prefix of their draft_token_ids (the sampled token comes after).
    accepted_token_ids: dict[str, list[int]] = field(default_factory=dict)
