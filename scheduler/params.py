"""SamplingParams and Request: what a request asks for, and the counters the scheduler keeps."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from decoding.stopping import LENGTH, STOP


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 is greedy (top_k/top_p ignored)."""

    temperature: float = 0.0
    top_k: Optional[int] = None  # keep the k most likely tokens; None = all
    top_p: Optional[float] = None  # nucleus mass in (0, 1]; None = off
    seed: Optional[int] = None  # per-request torch.Generator seed; None = global RNG
    max_tokens: int = 16  # new tokens at most
    stop_token_ids: Sequence[int] = ()  # stop after emitting any of these (kept in the output)
    stop: Sequence[str] = ()  # stop strings: the text is cut before the first match
    ignore_eos: bool = False  # keep going past the tokenizer's eos (benchmarks)

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        if not (isinstance(self.max_tokens, int) and self.max_tokens >= 1):
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop", tuple(self.stop))


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # waiting again, its KV freed; it recomputes from token 0
    FINISHED_STOPPED = STOP  # a stop token or stop string
    FINISHED_LENGTH = LENGTH  # max_tokens or the model context
    FINISHED_ABORTED = "abort"  # cancelled

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset((RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED))


@dataclass(eq=False)
class Request:
    """One generation request and its counters.

    token_ids = prompt + outputs so far (num_tokens of them); num_computed_tokens of them
    have K/V in the cache. Everything the scheduler does is a statement about these two
    counts: prefill is num_computed < num_prompt_tokens, a prefix hit starts
    num_computed above 0, a chunk advances it by the chunk size, a decode by 1, and
    preemption resets it to 0 (the outputs are kept and recomputed as prompt).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.perf_counter)
    on_token: Optional[Callable] = None  # streaming callback, called by the engine
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    num_prefix_hit_tokens: int = 0  # summed over admissions
    sent_to_runner: bool = False
    first_token_time: Optional[float] = None
    token_times: list[float] = field(default_factory=list)
    token_latencies: list[float] = field(default_factory=list)  # gaps, appended per token (O(1) a step)

    def __post_init__(self):
        self.prompt_token_ids = list(self.prompt_token_ids)
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens
