"""Scheduler: which tokens of which requests run next, from per-request counters.

One schedule() serves every policy. Each step has a token budget; running requests go
first (in admission order), then waiting ones (FCFS). A request is offered
num_tokens - num_computed_tokens tokens: 1 for a decode, the rest of the prompt for a
prefill, everything again after preemption. The policies differ only in two knobs:

- "static": admit a new batch only when nothing runs; the batch runs to its end.
- "continuous": admit whenever a request's whole remaining prompt fits the budget.
- "chunked": like continuous, but a prefill may be cut to the budget left (decode
  tokens and prefill chunks share a step).

admission_batch (continuous and chunked; default 1) makes a full engine wait until that
many sequence slots are free before it admits again, so new prompts join in groups: a
step that mixes prefills with decodes cannot replay a decode graph and costs several
decode steps, so a saturated engine pays for fewer of them (at some TTFT; in the spirit
of vLLM's scheduler_delay_factor). An engine with fewer running admits at once as before.

No tensors here: the KV side is KVCacheManager (block ids), the model side gets a
SchedulerOutput. When the pool is short, the newest running request is preempted
(its blocks freed, its counters reset, back to the head of the queue); no request is
dropped, and a request that can never fit is refused at add time by the engine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence

from cache.block_pool import BlockPool
from cache.kv_manager import KVCacheManager
from decoding.stopping import LENGTH, stop_reason
from scheduler.outputs import ModelRunnerOutput, NewRequestData, ScheduledRequest, SchedulerOutput
from scheduler.params import Request, RequestStatus
from scheduler.speculative import apply_verified

POLICIES = ("static", "continuous", "chunked")


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "chunked"  # one of POLICIES
    max_num_seqs: int = 64  # requests running at once
    # Tokens per step (decode + prefill). Without chunking a prompt must fit in one step,
    # so the engine requires it >= the model context for "static" and "continuous".
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048  # prompt + outputs never exceed this
    admission_batch: int = 1  # free sequence slots a running engine waits for before admitting

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {self.policy!r}; choose one of {POLICIES}")
        if not 1 <= self.admission_batch <= self.max_num_seqs:
            raise ValueError(f"admission_batch must be in [1, max_num_seqs={self.max_num_seqs}], "
                             f"got {self.admission_batch}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_num_batched_tokens must be >= 1, got "
                             f"{self.max_num_seqs}, {self.max_num_batched_tokens}")


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool):
        self.config = config
        self.pool = pool
        self.kv = KVCacheManager(pool)
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order; the last is preempted first
        self._finished_ids: list[str] = []  # since the last schedule(), for the runner
        self.num_preemptions = 0
        self.num_steps = 0
        self.proposer = None  # speculation: scheduler.speculative.NgramProposer or DraftProposer (set by the engine)

    # ------------------------------------------------------------------ requests
    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, f"duplicate request id {request.request_id!r}"
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> Optional[Request]:
        """Cancel: free the request's blocks now; None if it is unknown or already finished."""
        req = self.requests.get(request_id)
        if req is not None:
            self.finish_request(req, RequestStatus.FINISHED_ABORTED)
        return req

    def fail_request(self, request_id: str, error: str) -> Optional[Request]:
        """Finish a request with FINISHED_ERROR and the message `error`, freeing its blocks now;
        None if it is unknown or already finished. The other requests go on."""
        req = self.requests.get(request_id)
        if req is not None:
            req.error = error
            self.finish_request(req, RequestStatus.FINISHED_ERROR)
        return req

    def finish_request(self, req: Request, status: RequestStatus) -> None:
        assert status.finished
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.status = status
        self.kv.free(req.request_id)
        self.requests.pop(req.request_id, None)
        self._finished_ids.append(req.request_id)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, req: Request) -> None:
        """Recompute-style preemption: drop the KV, keep the tokens, requeue at the front."""
        self.running.remove(req)
        self.kv.free(req.request_id)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ------------------------------------------------------------------ schedule
    def schedule(self) -> SchedulerOutput:
        cfg = self.config
        out = SchedulerOutput(finished_request_ids=self._finished_ids)
        self._finished_ids = []
        budget = cfg.max_num_batched_tokens
        chunked = cfg.policy == "chunked"

        def add(req: Request, num_new: int, copies, draft: Sequence[int] = ()) -> None:
            out.block_copies.extend(copies)
            start, known = req.num_computed_tokens, num_new - len(draft)  # draft: fed after the known tokens
            out.scheduled.append(ScheduledRequest(
                request_id=req.request_id, token_ids=req.token_ids[start:start + known] + list(draft),
                start_pos=start, block_ids=list(self.kv.block_ids(req.request_id)),
                sample=start + known == req.num_tokens, draft_token_ids=tuple(draft)))
            if not req.sent_to_runner:
                p = req.params
                out.new_requests.append(
                    NewRequestData(req.request_id, p.temperature, p.top_k, p.top_p, p.seed, p.logprobs))
                req.sent_to_runner = True

        # 1. Running requests: a decode token each, or their next prefill chunk.
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = req.num_tokens - req.num_computed_tokens
            if num_new > budget:
                if not chunked:
                    i += 1
                    continue
                num_new = budget
            # Speculation (scheduler/speculative.py): a decode may feed proposals after its token.
            draft = self.proposer(req, budget - 1) if self.proposer is not None and num_new == 1 else ()
            copies = self.kv.allocate_slots(req.request_id, req.num_computed_tokens, num_new + len(draft))
            if copies is None and draft:  # no room to speculate: decode plainly before preempting anyone
                draft, copies = (), self.kv.allocate_slots(req.request_id, req.num_computed_tokens, num_new)
            num_new += len(draft)
            while copies is None:  # out of blocks: preempt from the back until it fits
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted_request_ids.append(victim.request_id)
                if victim is req:
                    break
                copies = self.kv.allocate_slots(req.request_id, req.num_computed_tokens, num_new)
            if copies is None:
                break  # req preempted itself: it was the last running request
            add(req, num_new, copies, draft)
            budget -= num_new
            i += 1

        # 2. Waiting requests, first come first served, while blocks and budget last.
        # Not after a preemption (the pool is tight), and a static batch admits only when empty.
        may_admit = not out.preempted_request_ids and (cfg.policy != "static" or not self.running)
        if self.running and cfg.max_num_seqs - len(self.running) < cfg.admission_batch:
            may_admit = False  # admission_batch: let more slots free up, then admit a group
        while may_admit and self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = self.waiting[0]
            hit = self.kv.get_computed_blocks(req.request_id, req.token_ids)
            num_new = req.num_tokens - hit
            if num_new > budget and not chunked:
                self.kv.free(req.request_id)
                break
            num_new = min(num_new, budget)
            copies = self.kv.allocate_slots(req.request_id, hit, num_new)
            if copies is None:  # admission by free blocks: wait for room
                self.kv.free(req.request_id)
                break
            self.waiting.popleft()
            req.num_computed_tokens = hit
            req.num_prefix_hit_tokens += hit
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            add(req, num_new, copies)
            budget -= num_new
        self.num_steps += 1
        return out

    # ------------------------------------------------------------------ update
    def update_from_output(self, sched: SchedulerOutput, result: ModelRunnerOutput) -> list[Request]:
        """Advance counters, append sampled tokens, stop finished requests.

        Returns the requests that got a new token this step (finished ones included,
        with their status set); stop strings are the engine's job (it has the tokenizer).
        """
        touched = []
        for s in sched.scheduled:
            req = self.requests.get(s.request_id)
            if req is None or req.status != RequestStatus.RUNNING:
                continue  # aborted during the step
            if s.draft_token_ids:  # speculated: accepted prefix + one token, the rest rolled back
                if apply_verified(self, req, s, result):
                    touched.append(req)
                continue
            req.num_computed_tokens += len(s.token_ids)
            self.kv.cache_full_blocks(req.request_id, req.token_ids, req.num_computed_tokens)
            if not s.sample:
                continue
            tok = result.sampled_token_ids[s.request_id]
            req.token_ids.append(tok)
            if s.request_id in result.logprobs:
                req.logprobs.append(result.logprobs[s.request_id])
            touched.append(req)
            reason = stop_reason(tok, req.num_output_tokens, req.params.max_tokens, req.params.stop_token_ids)
            if reason is None and req.num_tokens >= self.config.max_model_len:
                reason = LENGTH
            if reason is not None:
                self.finish_request(req, RequestStatus(reason))  # FINISHED_STOPPED or FINISHED_LENGTH
        return touched
