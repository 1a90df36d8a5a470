"""SamplingParams and Request: what a request asks for, and the counters the scheduler keeps."""

from __future__ import annotations

import enum
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from decoding.sampling import check_sampling  # the ranges (and MIN_TEMPERATURE, the floor)
from decoding.stopping import LENGTH, STOP

MAX_LOGPROBS = 20  # top alternatives per token at most (OpenAI's limit)
SEED_LIMIT = 1 << 63  # seeds in [0, 2**63): a torch.Generator takes a signed 64-bit seed


class SamplingParamsError(ValueError):
    """A SamplingParams field has the wrong type or is out of range; the message names the field."""


def _int(name: str, value) -> int:
    """value as an int; a bool, a float or a string is refused (no silent truncation)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SamplingParamsError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def _real(name: str, value) -> float:
    """value as a finite float; a bool, a string or NaN/inf is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SamplingParamsError(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")
    return float(value)


def _items(name: str, value, kind: str, check: Callable) -> tuple:
    """A list/tuple of `kind` values, each passed through `check`; a lone string is one item."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise SamplingParamsError(f"{name} must be a list of {kind}, got {value!r} ({type(value).__name__})")
    return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))


def _token_id(name: str, value) -> int:
    token = _int(name, value)
    if token < 0:
        raise SamplingParamsError(f"{name} must be a token id >= 0, got {token}")
    return token


def _stop_string(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise SamplingParamsError(f"{name} must be a non-empty string (an empty one matches everywhere), "
                                  f"got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 is greedy (top_k/top_p ignored).

    Every field is checked at construction (SamplingParamsError names the field and the value),
    so a request that was accepted never fails for its parameters inside an engine step.
    """

    temperature: float = 0.0  # 0 = greedy, else >= decoding.sampling.MIN_TEMPERATURE
    top_k: Optional[int] = None  # keep the k most likely tokens; None (or -1, as vLLM) = all
    top_p: Optional[float] = None  # nucleus mass in (0, 1]; None = off
    seed: Optional[int] = None  # per-request torch.Generator seed in [0, 2**63); None = global RNG
    max_tokens: int = 16  # new tokens at most, >= 1
    stop_token_ids: Sequence[int] = ()  # stop after emitting any of these (kept in the output)
    stop: Sequence[str] = ()  # stop strings: the text is cut before the first match
    ignore_eos: bool = False  # keep going past the tokenizer's eos (benchmarks)
    # Log-probabilities: None = none; k = the sampled token's and the k most likely (0..MAX_LOGPROBS),
    # of the model's raw distribution (log_softmax of the logits, before temperature/top-k/top-p).
    logprobs: Optional[int] = None
    # With an engine that speculates (LLM(..., speculative=...)): False = this request never does.
    speculative: bool = True

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        # Types here (no bools, no strings, finite); the ranges are decoding.sampling's one rule.
        t = _real("temperature", self.temperature)
        k = None if self.top_k is None else _int("top_k", self.top_k)
        k = None if k == -1 else k  # -1 = all tokens, as vLLM spells it
        p = None if self.top_p is None else _real("top_p", self.top_p)
        try:
            check_sampling(t, k, p)
        except ValueError as e:
            raise SamplingParamsError(str(e)) from None
        put("temperature", t)
        put("top_k", k)
        put("top_p", p)
        if self.seed is not None:
            seed = _int("seed", self.seed)
            if not 0 <= seed < SEED_LIMIT:
                raise SamplingParamsError(f"seed must be in [0, 2**63) or None, got {seed}")
            put("seed", seed)
        n = _int("max_tokens", self.max_tokens)
        if n < 1:
            raise SamplingParamsError(f"max_tokens must be an int >= 1, got {n}")
        put("max_tokens", n)
        put("stop_token_ids", _items("stop_token_ids", self.stop_token_ids, "token ids", _token_id))
        put("stop", _items("stop", self.stop, "strings", _stop_string))
        if not isinstance(self.ignore_eos, bool):
            raise SamplingParamsError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if not isinstance(self.speculative, bool):
            raise SamplingParamsError(f"speculative must be a bool, got {self.speculative!r}")
        if self.logprobs is not None:
            k = _int("logprobs", self.logprobs)
            if not 0 <= k <= MAX_LOGPROBS:
                raise SamplingParamsError(f"logprobs must be in [0, {MAX_LOGPROBS}] or None, got {k}")
            put("logprobs", k)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # waiting again, its KV freed; it recomputes from token 0
    FINISHED_STOPPED = STOP  # a stop token or stop string
    FINISHED_LENGTH = LENGTH  # max_tokens or the model context
    FINISHED_ABORTED = "abort"  # cancelled
    FINISHED_ERROR = "error"  # executing or sampling it raised; Request.error says what

    @property
    def finished(self) -> bool:
        return self._value_ in _FINISHED  # by value: a str hash in C, not Enum.__hash__ in Python (hot: per request per step)


_FINISHED = frozenset(s.value for s in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                                        RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR))


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
    error: Optional[str] = None  # why it finished with FINISHED_ERROR
    # With params.logprobs: per output token (its logprob, [(id, logprob)] of the top params.logprobs).
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)

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
