"""Prometheus metrics of the server, in a registry of its own (several servers in one process stay apart).

Histograms: time to first token, time per output token (per request), end-to-end latency.
Gauges: requests running / waiting / preempted (waiting again after losing their KV), KV
blocks in use and their fraction of the pool. Counters: prompt and generated tokens,
finished requests by finish reason, preemptions, 429 refusals.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scheduler import RequestStatus

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
                    5.0, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    """The server's collectors; observe_step is called by the engine thread after each step."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("lab_time_to_first_token_seconds", "Arrival to first token.", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.tpot = Histogram("lab_time_per_output_token_seconds", "Per request: (last - first token) / "
                              "(outputs - 1).", registry=r, buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("lab_e2e_request_latency_seconds", "Arrival to last token.", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.running = Gauge("lab_num_requests_running", "Requests in the running batch.", registry=r)
        self.waiting = Gauge("lab_num_requests_waiting", "Requests queued (preempted ones included).", registry=r)
        self.preempted = Gauge("lab_num_requests_preempted", "Waiting requests that were preempted.", registry=r)
        self.kv_blocks = Gauge("lab_kv_blocks_in_use", "KV blocks held by requests.", registry=r)
        self.kv_usage = Gauge("lab_kv_cache_usage_ratio", "KV blocks in use / usable blocks.", registry=r)
        self.prompt_tokens = Counter("lab_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("lab_generation_tokens", "Tokens generated.", registry=r)
        self.finished = Counter("lab_request_finished", "Finished requests by finish reason.", ["finish_reason"],
                                registry=r)
        self.preemptions = Counter("lab_preemptions", "Preemptions (by recompute).", registry=r)
        self.rejected = Counter("lab_requests_rejected", "Requests refused with 429 (queue full).", registry=r)
        self._seen: dict[str, int] = {}
        self._preemptions_seen = 0

    def observe_step(self, engine, outs, now: float) -> None:
        sched = engine.scheduler
        self.running.set(len(sched.running))
        waiting = list(sched.waiting)
        self.waiting.set(len(waiting))
        self.preempted.set(sum(r.status == RequestStatus.PREEMPTED for r in waiting))
        used = engine.blocks_in_use()
        self.kv_blocks.set(used)
        self.kv_usage.set(used / max(1, engine.pool.num_usable_blocks))
        if sched.num_preemptions > self._preemptions_seen:
            self.preemptions.inc(sched.num_preemptions - self._preemptions_seen)
            self._preemptions_seen = sched.num_preemptions
        for out in outs:
            n = len(out.token_ids)
            new = n - self._seen.get(out.request_id, 0)
            if new > 0:
                self.generation_tokens.inc(new)
            if not out.finished:
                self._seen[out.request_id] = n
                continue
            self._seen.pop(out.request_id, None)
            self.finished.labels(out.finish_reason).inc()
            self.prompt_tokens.inc(len(out.prompt_token_ids))
            if out.ttft_s is not None and out.finish_reason in ("stop", "length"):
                self.ttft.observe(out.ttft_s)
                gaps = out.token_latencies_s
                self.e2e.observe(out.ttft_s + sum(gaps))
                if gaps:
                    self.tpot.observe(sum(gaps) / len(gaps))

    def render(self) -> bytes:
        return generate_latest(self.registry)
