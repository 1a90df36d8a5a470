"""AsyncEngine: one thread drives LLMEngine.step while asyncio handlers add, stream and abort.

Only the engine thread touches the LLMEngine. Handlers (on the event loop) put
("add", ...) / ("abort", id) into an inbox and wake the thread; after each step the thread
hands the step's outputs to the loop in one call_soon_threadsafe, and each request's Sink
keeps only its latest output (outputs are cumulative), so a slow reader gets several tokens
in one read instead of an ever longer queue.

Admission is bounded: a request that would make more than `max_queue` requests wait (queued
in the engine or still in the inbox) is refused with QueueFull (the server's 429). An
exception escaping a step (the engine already fails the requests of a step whose forward
raises) fails every live request with finish_reason "error" and the loop goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from typing import Optional

from scheduler import LLMEngine, RequestOutput, SamplingParams

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is full; retry_after_s is the server's estimate of when to retry."""

    def __init__(self, waiting: int, limit: int, retry_after_s: int):
        super().__init__(f"the server's queue is full ({waiting} requests waiting, limit {limit}); "
                         f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Sink:
    """The outputs of one HTTP request's engine requests (n choices x prompts), read on the loop."""

    def __init__(self, request_ids: list[str], final_only: bool = False):
        self.request_ids = request_ids
        self.final_only = final_only  # wake the reader only when a request finishes (not streamed)
        self.latest: dict[str, RequestOutput] = {}
        self.dirty: list[str] = []
        self.errors: dict[str, Exception] = {}  # add_request refused it (a 400)
        self.event = asyncio.Event()
        self.unfinished = set(request_ids)

    def put(self, out: RequestOutput) -> None:
        self.latest[out.request_id] = out
        if out.request_id not in self.dirty:
            self.dirty.append(out.request_id)
        if out.finished:
            self.unfinished.discard(out.request_id)
        if out.finished or not self.final_only:
            self.event.set()

    def fail(self, request_id: str, err: Exception) -> None:
        self.errors[request_id] = err
        self.unfinished.discard(request_id)
        self.event.set()

    async def updates(self) -> list[RequestOutput]:
        """Wait for news; the latest output of each request that changed (raises an add error)."""
        await self.event.wait()
        self.event.clear()
        if self.errors:
            raise next(iter(self.errors.values()))
        changed, self.dirty = self.dirty, []
        return [self.latest[rid] for rid in changed]

    @property
    def finished(self) -> bool:
        return not self.unfinished


class AsyncEngine:
    """The engine thread and the inbox; `metrics` (serve.metrics.Metrics) is updated after each step."""

    def __init__(self, engine: LLMEngine, max_queue: int = 256, metrics=None):
        self.engine = engine
        self.max_queue = max_queue
        self.metrics = metrics
        self._inbox: deque = deque()
        self._wake = threading.Event()
        self._sinks: dict[str, Sink] = {}  # loop thread only
        self._submitted = 0  # adds put in the inbox (loop thread only)
        self._taken = 0  # adds taken from the inbox (engine thread only)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = False
        self._ids = itertools.count()
        self.mean_e2e_s = 1.0  # moving average, for Retry-After
        self.steps = 0
        self.step_errors = 0

    # ------------------------------------------------------------------ event-loop side
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def num_waiting(self) -> int:
        """Requests queued: in the engine's waiting queue or not yet taken from the inbox."""
        return len(self.engine.scheduler.waiting) + (self._submitted - self._taken)

    def submit(self, prompts: list[tuple[list[int], SamplingParams]], final_only: bool = False) -> Sink:
        """Queue these requests together (one HTTP request's choices) or raise QueueFull."""
        waiting = self.num_waiting()
        if waiting + len(prompts) > self.max_queue:
            seqs = self.engine.scheduler.config.max_num_seqs
            retry = max(1, round(self.mean_e2e_s * (1 + waiting / seqs)))
            if self.metrics is not None:
                self.metrics.rejected.inc()
            raise QueueFull(waiting, self.max_queue, retry)
        base = uuid.uuid4().hex[:12]
        ids = [f"{base}-{i}" for i in range(len(prompts))]
        sink = Sink(ids, final_only)
        for rid, (ids_, params) in zip(ids, prompts):
            self._sinks[rid] = sink
            self._submitted += 1
            self._inbox.append(("add", rid, ids_, params))
        self._wake.set()
        return sink

    def abort(self, sink: Sink) -> None:
        """Cancel the sink's unfinished requests (a client went away): their blocks are freed."""
        for rid in list(sink.unfinished):
            self._inbox.append(("abort", rid))
            self._sinks.pop(rid, None)
        sink.unfinished.clear()
        self._wake.set()

    def _deliver(self, outs: list[RequestOutput], add_errors: list[tuple[str, Exception]]) -> None:
        for rid, err in add_errors:
            sink = self._sinks.pop(rid, None)
            if sink is not None:
                sink.fail(rid, err)
        for out in outs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue  # aborted
            sink.put(out)
            if out.finished:
                del self._sinks[out.request_id]

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        engine = self.engine
        while not self._stop:
            self._wake.clear()
            add_errors, aborted = self._drain()
            outs: list[RequestOutput] = aborted  # for the metrics; their sinks are gone
            if engine.has_unfinished_requests():
                try:
                    outs = aborted + engine.step()
                except Exception as e:  # noqa: BLE001 - the live requests fail, the server keeps serving
                    log.exception("AsyncEngine: a step raised; its requests finish with an error")
                    outs = aborted + self._fail_all(f"the engine step raised {type(e).__name__}: {e}")
                    self.step_errors += 1
                self.steps += 1
            elif not add_errors:
                self._observe(outs)
                self._wake.wait(0.5)
                continue
            self._observe(outs)
            if outs or add_errors:
                self._loop.call_soon_threadsafe(self._deliver, outs, add_errors)

    def _drain(self) -> tuple[list[tuple[str, Exception]], list[RequestOutput]]:
        """Apply the inbox: (add errors, outputs of the requests aborted)."""
        errors, aborted = [], []
        while self._inbox:
            item = self._inbox.popleft()
            if item[0] == "add":
                _, rid, ids, params = item
                self._taken += 1
                try:
                    self.engine.add_request(ids, params, request_id=rid)
                except ValueError as e:  # ContextLengthError, KVCapacityError, bad ids: a 400
                    errors.append((rid, e))
            else:
                out = self.engine.abort_request(item[1])
                if out is not None:
                    aborted.append(out)
        return errors, aborted

    def _fail_all(self, why: str) -> list[RequestOutput]:
        outs = []
        for rid in list(self.engine.scheduler.requests):
            out = self.engine.abort_request(rid)
            if out is not None:
                outs.append(out.replace(finish_reason="error", error=why))
        return outs

    def _observe(self, outs: list[RequestOutput]) -> None:
        for out in outs:
            if out.finished and out.ttft_s is not None:
                e2e = out.ttft_s + sum(out.token_latencies_s)
                self.mean_e2e_s = 0.9 * self.mean_e2e_s + 0.1 * e2e
        if self.metrics is not None:
            self.metrics.observe_step(self.engine, outs, time.perf_counter())
