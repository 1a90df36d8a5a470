"""Where a serving step's time goes: torch.profiler over steps of a loaded continuous engine.

Used by `bench.serving --profile_steps N`: 2 x max_num_seqs requests arrive at t = 0, the
engine steps until the batch is full, then N steps run under the profiler (each followed
by a device sync so its wall time is its own). Every step is tagged "mixed" (it admitted
a waiting request or continued a chunked prefill: prefill tokens with the decodes, eager) or "decode" (graph-replayable),
and the log gets the wall-time summary of each kind plus the top ops by self device time
and by self host time. The Chrome trace goes to <out_dir>/serving_profile.json.gz.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional


from bench import common, profiling


def profile_steps(engine, reqs: list[tuple[list[int], int]], max_num_seqs: int, steps: int,
                  out_dir: Optional[Path], log: Callable[[str], None]) -> dict[str, Any]:
    """Profile `steps` engine steps at full load; returns {"mixed": [ms...], "decode": [ms...], "trace": path}."""
    from torch.profiler import ProfilerActivity, profile

    from scheduler import SamplingParams

    if steps < 1:
        raise ValueError(f"profile steps must be >= 1, got {steps}")
    device = engine.paged_kv.k[0].device
    cuda = device.type == "cuda"
    sched = engine.scheduler
    for p, m in reqs:
        engine.add_request(p, SamplingParams(max_tokens=m, ignore_eos=True))
    # Fill until the batch is full or stops growing for 8 steps (a chunked engine paces admission by
    # its token budget and may never reach max_num_seqs: waiting for that once ran the trace out).
    most, stale = 0, 0
    while engine.has_unfinished_requests() and len(sched.running) < max_num_seqs and stale < 8:
        engine.step()
        stale = stale + 1 if len(sched.running) <= most else 0
        most = max(most, len(sched.running))
    for _ in range(3):  # settle (graph capture, autotune) outside the profile
        engine.step()
    walls: dict[str, list[float]] = {"mixed": [], "decode": []}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            if not engine.has_unfinished_requests():
                break
            waiting = len(sched.waiting)
            # a running request still short of its prompt (a chunked prefill) makes the step mixed too
            prefilling = any(r.num_computed_tokens < r.num_tokens - 1 for r in sched.running)
            t0 = time.perf_counter()
            engine.step()
            common.sync(device)
            kind = "mixed" if len(sched.waiting) < waiting or prefilling else "decode"
            walls[kind].append((time.perf_counter() - t0) * 1e3)
    for rid in list(sched.requests):
        engine.abort_request(rid)
    for kind, ms in walls.items():
        if ms:
            log(f"profile: {len(ms)} {kind} steps, wall p50 {statistics.median(ms):.1f} ms, "
                f"min {min(ms):.1f}, max {max(ms):.1f}")
    averages = prof.key_averages()
    if cuda:
        log("profile: top ops by self device time\n"
            + averages.table(sort_by="self_cuda_time_total", row_limit=15))
    log("profile: top ops by self host time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=15))
    trace = None
    if out_dir is not None:
        trace = profiling.save_trace(prof, out_dir, "serving_profile")
        log(f"profile: Chrome trace {trace} (open in chrome://tracing or ui.perfetto.dev)")
    return {**walls, "trace": trace}
