"""Serving: one Poisson request trace replayed in wall-clock time under the static, continuous
and chunked-prefill policies of the engine (scheduler.LLMEngine).

Question: what does each scheduling policy give a stream of requests that arrive over time
(throughput, time to first token, time per output token, end-to-end latency), and how well
does it use the paged KV cache (blocks in use, slots allocated but empty)?

  python3 -m bench.serving                                  # CPU: tiny model, 48 requests
  python3 -m bench.serving --policies=continuous --rate=20 --num_requests=200
  python3 -m bench.serving --num_blocks=40                  # a tight KV: preemptions
  python3 -m bench.serving --backend=compare --checkpoint=lab-small   # in-process vs the HTTP server
  python3 -m bench.serving --backend=http --url=http://127.0.0.1:8000 --rate=8   # a running server
  bazel run //bench:serving -- --preset=llama3-8b --n_layers=8   # GPU: random weights, bf16

The trace. Arrivals are a Poisson process: gaps ~ Exponential(--rate), the first request
at t = 0; --rate 0 (default) measures the engine first (2 x --max_num_seqs requests at
t = 0 under the continuous policy: output tokens/s while --max_num_seqs run and the queue
lasts, over the trace's mean output length; this also warms the engine up) and sets
rate = --load x that capacity, so the engine is loaded. Prompt and output lengths are
drawn independently from --len_dist: lognormal (median --*_median, shape --*_sigma, i.e.
round(median * exp(sigma * N(0, 1)))) or uniform integers, both clipped to
[--*_min, --*_max]. Prompts are uniform random token ids of the vocabulary. Decoding
is greedy and ignores EOS, so every request produces exactly its drawn output length
and every policy does the same work. The same trace (same seed) goes to every policy.

The model. --preset (default: "embedded", the shape of model/embedded.py's tiny model
with vocab 258, on a CPU; llama3-8b on a GPU) in --dtype (fp32 on a CPU, bf16 on a GPU)
with random weights: norms U(0.5, 1.5), embeddings N(0, 0.1), other matrices
N(0, 1/fan_in), the recipe of model/random_weights.py (the embedded model and the engine
parity tests use it too), since it gives varied logits: a 0.02 init with unit norms makes
greedy decoding repeat the last token, and a degenerate model lets a broken engine pass
the gate. Built by model.load on the meta device and materialised on the device in
--dtype (no host copy, no fp32 detour), so an 8B model is ready in seconds; --n_layers
shrinks it; --seed picks the weights. --weights=embedded serves the embedded model itself
(seed model.embedded.EMBEDDED_SEED); --checkpoint anything model.load takes (an HF-layout
directory, lab-small, lab-draft). Step times do not depend on the weights' values.

Replay. One engine per policy. Each loop: add every request whose arrival time has
passed, then one engine step (schedule -> execute -> update); when nothing is queued or
running the loop sleeps until the next arrival. Times are the engine's (perf_counter
after each step's outputs); TTFT and end-to-end latency count from the trace's arrival
time, not from when the loop got round to adding the request.

Metrics per policy: requests/s and output tokens/s over the makespan (first arrival to
last token); TTFT p50/p99; TPOT p50/p99 (per request: (last token - first token) /
(outputs - 1)); ITL p99 (every gap between consecutive tokens, pooled); end-to-end p50/p99;
preemptions (by recompute, when the KV is full); KV utilisation (blocks in use / usable
blocks, sampled after every step, mean weighted by step time, and peak); KV waste
(allocated slots not holding a token's K/V / allocated slots, sampled after every step
that holds blocks: the partly filled last block of each request, bounded by
block_size - 1 slots per request, so ~(block_size / 2) / mean length for long
sequences). Every request must finish with exactly its output length: a dropped or short
request is an error, not a figure. With few requests p99 is close to the maximum.

Correctness gate, before anything is timed: for --check_requests requests (own prompts,
outputs capped at --check_tokens), each policy's engine must produce the same greedy
tokens as single-request decoding (decoding.generate). fp32: identical. bf16/fp16:
batching and the paged kernels change the rounding, so two nearly tied tokens may swap
and the sequences part; from the first difference on, the engine's own tokens are
checked teacher-forced against the model (one no-cache forward): each must be the
reference's argmax or a near tie (parity.ties: within 5e-2 x max|logit| in bf16, 2e-2 in
fp16, the bands measured there). Such near ties are counted in the report. Anything else stops the run with
the request and position named, and nothing is timed. After the timed runs the
policies' outputs on the trace are compared too (fp32: must be identical).

Ceiling: the measured same-device copy bandwidth (bench.common.measure_copy_bandwidth).
On a GPU each decode step reads every weight once, so a policy's mean running batch B
bounds output tokens/s by B * bandwidth / weight bytes (prefill and KV reads ignored:
an upper bound). A CPU run is host-overhead bound (the tiny weights sit in cache): its
bandwidth is printed as context only.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from absl import app, flags

from bench import common

POLICIES = ("static", "continuous", "chunked")
EMBEDDED = "embedded"
WEIGHTS = ("random", "embedded")
LEN_DISTS = ("lognormal", "uniform")

FLAGS = flags.FLAGS
# Flags other lab modules define too, with the same meaning (bench.perplexity's and
# bench.decode's --device default "auto", read here as None): defined once per process, so
# pytest can import the bench modules side by side. Ours yields to one made before and
# allows override by one made after. Our other names are our own (--prompt_median, not
# bench.decode's --prompt_len).
_define = common.define_flag


_define("list", "policies", list(POLICIES), "Scheduling policies to run, in order: " + ", ".join(POLICIES) + ".")
_define("integer", "num_requests", None, "Requests in the trace. Default 48 on a CPU (seconds), 256 on a GPU "
        "(minutes: bench/gpu_engine.sh gives a benchmark 420 s), 512 with --full.")
_define("boolean", "full", False, "The long trace: 512 requests (CPU: about 40 s in all).")
_define("float", "rate", 0.0, "Mean arrival rate, requests/s (Poisson). 0 (default): --load x the capacity measured "
        "on this machine first (saturated continuous batching), so the engine is loaded; inf: all arrive at t = 0.")
_define("float", "load", 1.0, "With --rate 0: arrival rate as a multiple of the measured capacity. 1.0: at "
        "saturation (continuous keeps up on average, queues come and go; static falls behind).")
_define("enum", "len_dist", "lognormal", "Distribution of prompt and output lengths (clipped to the bounds): "
        "lognormal (median, sigma) or uniform [min, max].", enum_values=list(LEN_DISTS))
_define("integer", "prompt_median", None, "Median prompt length (lognormal), tokens. Default 48 on a CPU, 256 on a "
        "GPU.")
_define("float", "prompt_sigma", 0.6, "Lognormal shape of prompt lengths (0.6: p90 ~ 2.2x the median).")
_define("integer", "prompt_min", None, "Shortest prompt, tokens. Default 4 on a CPU, 16 on a GPU.")
_define("integer", "prompt_max", None, "Longest prompt, tokens. Default 144 on a CPU, 1024 on a GPU.")
_define("integer", "output_median", None, "Median output length (lognormal), tokens. Default 48 on a CPU, 128 on a "
        "GPU.")
_define("float", "output_sigma", 0.6, "Lognormal shape of output lengths.")
_define("integer", "output_min", None, "Shortest output, tokens. Default 4 on a CPU, 16 on a GPU.")
_define("integer", "output_max", None, "Longest output, tokens. Default 104 on a CPU, 512 on a GPU "
        "(--prompt_max + --output_max must fit --max_model_len).")
_define("integer", "seed", 0, "Seed of the trace (arrivals, lengths, prompt ids) and of the random weights.")
_define("string", "preset", None, "Model shape: 'embedded' (the tiny embedded model's config) or a model.config "
        "preset (llama3-8b, ...). Default embedded on a CPU, llama3-8b on a GPU.")
_define("integer", "n_layers", None, "Override the preset's layer count (shrink a big preset to fit or to run faster).")
_define("enum", "weights", "random", "random: seeded weights with varied logits (norms U(0.5, 1.5), embeddings "
        "N(0, 0.1), others N(0, 1/fan_in)); embedded: model/embedded.py's own weights (--preset embedded only).",
        enum_values=list(WEIGHTS))
_define("string", "checkpoint", None, "HF-layout checkpoint directory (or lab-small, lab-draft) to serve instead "
        "of random weights.")
_define("string", "dtype", None, "Element type: bf16, fp16, fp32. Default bf16 on a GPU, fp32 on a CPU.")
_define("string", "device", None, "cuda, cuda:N or cpu. Default (or auto) cuda when a GPU is visible, else cpu.")
_define("integer", "block_size", 16, "Tokens per KV block. 16: vLLM's default.")
_define("integer", "max_num_seqs", None, "Requests running at once. Default 16 on a CPU, 64 on a GPU.")
_define("integer", "max_model_len", None, "Context limit of the engine, tokens. Default the model's on a CPU (256 "
        "for the tiny model), min(model's, 4096) on a GPU.")
_define("integer", "max_num_batched_tokens", None, "Token budget per step of static and continuous: a whole prompt "
        "must fit one step, and a static batch is the prompts that fit its first step. Default max(--max_model_len, "
        "2048 on a CPU, 16384 on a GPU): a static batch of many prompts, up to --max_num_seqs.")
_define("integer", "chunk_tokens", None, "Token budget per step of chunked (decodes plus prefill chunks). "
        "Default 2048 on a GPU (the engine's, scheduler.engine.GPU_CHUNK_TOKENS), 128 on a CPU.")
_define("list", "chunk_sizes", [], "Chunked: run it once per token budget in this list (rows 'chunked/<n>'), to "
        "choose the budget from measurement; the report names the best against continuous. Empty: --chunk_tokens.")
_define("integer", "chunked_admission_batch", None, "Chunked only: --admission_batch for the chunked policy "
        "(default: --admission_batch). Chunked prefill interleaves a new prompt with the running decodes, so it "
        "need not batch admissions as continuous does; 1 admits as soon as a slot frees.")
_define("integer", "admission_batch", 1, "Continuous and chunked: once max_num_seqs run, wait until this many slots "
        "are free before admitting again (prompts join in groups; fewer eager mixed steps). 1: admit at once.")
_define("integer", "num_blocks", None, "KV blocks, the null block included (small: forces preemption). Default: the "
        "engine's sizing (GPU: --gpu_memory_fraction of free memory; CPU: --max_num_seqs full-length requests).")
_define("float", "gpu_memory_fraction", 0.9, "GPU: KV budget as a fraction of free memory after the weights.")
_define("integer", "cpu_threads", 1, "CPU: torch intra-op threads during the run (restored after). 1: the tiny "
        "model's ops are too small to split, and a second thread waiting on a busy core makes steps 10x slower.")
_define("integer", "check_requests", 4, "Requests of the correctness gate (each policy, before timing).")
_define("integer", "check_tokens", 32, "Output tokens per gate request, at most.")
_define("integer", "profile_steps", 0, "After the policies, profile this many steps of a loaded continuous engine "
        "(torch.profiler; mixed prefill+decode steps told from decode-only ones; top ops in the log, Chrome trace "
        "serving_profile.json.gz). 0: no profile.")
_define("enum", "profile_policy", "continuous", "The policy of the engine --profile_steps profiles (chunked: its "
        "eager mixed steps).", enum_values=list(POLICIES))
_define("integer", "shared_prefix_tokens", 0, "Every prompt starts with one shared prefix of this many tokens "
        "(a system prompt, drawn from --seed) before its own tokens: the prefix-caching trace. 0: none.")
_define("enum", "prefix_caching", "on", "The engine's prefix cache: on, off, or both (each policy runs twice, the "
        "second as '<policy>/no-prefix-cache'; TTFT and prefix hit rate side by side).",
        enum_values=["on", "off", "both"])
_define("enum", "mixed_graphs", "on", "GPU: the engine's piecewise CUDA graphs for steps with prefill tokens "
        "(scheduler/mixed_graphs.py): on, off (eager mixed steps), or both (each policy twice, the second as "
        "'<policy>/eager-mixed': the before row in the same run).", enum_values=["on", "off", "both"])
_define("enum", "backend", "engine", "engine: the policies in-process. http: the trace over HTTP against --url "
        "(a running serve.openai_server; needs --rate). compare: in-process vs a server subprocess on the same trace, "
        "then the --overload run (bench/serving_http.py).", enum_values=["engine", "http", "compare"])
_define("string", "url", "http://127.0.0.1:8000", "--backend=http: the server's base URL.")
_define("string", "http_api_key", None, "--backend=http: the server's --api_key, if it has one.")
_define("float", "overload", 10.0, "--backend=compare: then replay the trace at this multiple of the capacity "
        "against a server with --max_queue = --max_num_seqs (every request completes or gets 429). 0: skip.")
_define("integer", "repeats", None, "--backend=compare: in-process then HTTP this many times on the same trace (the "
        "figures are medians over the pairs). Default 2 on a CPU (a shared machine's load drifts), 1 on a GPU.")
_define("string", "server_tokenizer", None, "--backend=compare: the server's --tokenizer, for a --checkpoint without "
        "one (a preset with random weights: third_party/tokenizers/llama3/tokenizer.model for llama3-8b).")
_define("boolean", "plot", True, "Write serving.png (throughput, TTFT, TPOT, latency per policy; KV use over time).")


class ServingUsageError(ValueError):
    """Bad flags or input; reported as one `error: ...` line, exit 2."""


class ParityError(AssertionError):
    """The engine's greedy tokens differ from single-request decoding: nothing is timed."""


# ----------------------------------------------------------------------------
# The trace
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthDist:
    """Lengths in [lo, hi]: lognormal round(median * exp(sigma * z)) or uniform integers, clipped."""

    kind: str
    median: int
    sigma: float
    lo: int
    hi: int

    def validate(self, what: str) -> None:
        if self.kind not in LEN_DISTS:
            raise ServingUsageError(f"--len_dist: expected one of {LEN_DISTS}, got {self.kind!r}")
        if not 1 <= self.lo <= self.hi:
            raise ServingUsageError(f"--{what}_min/--{what}_max: need 1 <= min <= max, got {self.lo}, {self.hi}")
        if self.kind == "lognormal" and (self.median < 1 or not self.sigma >= 0):
            raise ServingUsageError(f"--{what}_median must be >= 1 and --{what}_sigma >= 0, got {self.median}, "
                                    f"{self.sigma}")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "uniform":
            return rng.randint(self.lo, self.hi)
        x = round(self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))
        return min(self.hi, max(self.lo, x))

    def describe(self) -> str:
        if self.kind == "uniform":
            return f"uniform integers [{self.lo}, {self.hi}]"
        return f"lognormal(median {self.median}, sigma {self.sigma:g}) clipped to [{self.lo}, {self.hi}]"


@dataclass(frozen=True)
class TraceRequest:
    index: int
    arrival_s: float  # offset from the start of the replay
    prompt_ids: list[int]
    max_tokens: int


def draw_requests(n: int, prompt: LengthDist, output: LengthDist, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """n (prompt ids, output length) pairs: lengths from the distributions, ids uniform in [0, vocab)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t, m = prompt.sample(rng), output.sample(rng)
        out.append(([rng.randrange(vocab) for _ in range(t)], m))
    return out


def build_trace(n: int, rate: float, prompt: LengthDist, output: LengthDist, vocab: int,
                seed: int) -> list[TraceRequest]:
    """Poisson arrivals at `rate` requests/s (first at t = 0; rate inf: all at 0), lengths and ids from seed."""
    reqs = draw_requests(n, prompt, output, vocab, seed)
    return with_rate([TraceRequest(i, 0.0, ids, m) for i, (ids, m) in enumerate(reqs)], rate, seed)


def with_shared_prefix(trace: list[TraceRequest], tokens: int, vocab: int, seed: int) -> list[TraceRequest]:
    """The same requests, every prompt preceded by one shared prefix of `tokens` ids (drawn from seed)."""
    rng = random.Random(seed + 104729)
    prefix = [rng.randrange(vocab) for _ in range(tokens)]
    return [TraceRequest(r.index, r.arrival_s, prefix + r.prompt_ids, r.max_tokens) for r in trace]


def with_rate(trace: list[TraceRequest], rate: float, seed: int) -> list[TraceRequest]:
    """The same requests with Poisson arrivals at `rate`: unit-rate gaps from the seed, scaled by 1 / rate."""
    gaps = random.Random(seed + 7919)
    t, out = 0.0, []
    for i, r in enumerate(trace):
        if i:
            t += gaps.expovariate(1.0) / rate if math.isfinite(rate) else 0.0
        out.append(TraceRequest(r.index, t, r.prompt_ids, r.max_tokens))
    return out


def trace_stats(trace: list[TraceRequest]) -> dict[str, float]:
    p = [len(r.prompt_ids) for r in trace]
    o = [r.max_tokens for r in trace]
    return {"prompt_mean": sum(p) / len(p), "prompt_p50": common.percentile(p, 50), "prompt_max": max(p),
            "output_mean": sum(o) / len(o), "output_p50": common.percentile(o, 50), "output_max": max(o),
            "prompt_tokens": sum(p), "output_tokens": sum(o)}


# ----------------------------------------------------------------------------
# The model and the engine
# ----------------------------------------------------------------------------


def build_model(preset: str, n_layers: Optional[int], weights: str, device: str, dtype: torch.dtype,
                seed: int, checkpoint: Optional[str] = None) -> torch.nn.Module:
    """The served model, eval mode, on `device` in `dtype` (see the module docstring): model.load of
    --checkpoint, of the embedded model (--weights=embedded), or of --preset with random weights."""
    import model
    from model.config import ConfigError
    from model.loader import random_config
    from model.weights import CheckpointError

    if weights == "embedded" and not checkpoint and (preset != EMBEDDED or n_layers is not None):
        raise ServingUsageError("--weights=embedded needs --preset=embedded and no --n_layers")
    try:
        if checkpoint:
            return model.load(checkpoint, dtype=dtype, device=device)
        if weights == "embedded":
            return model.load(EMBEDDED, dtype=dtype, device=device)
        return model.load(random_config(preset), dtype=dtype, device=device, seed=seed, n_layers=n_layers)
    except (CheckpointError, ConfigError) as e:
        raise ServingUsageError(f"--checkpoint: {e}" if checkpoint else f"--preset/--n_layers: {e}") from None


@dataclass(frozen=True)
class EngineSettings:
    block_size: int
    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int  # static and continuous
    chunk_tokens: int  # chunked
    num_blocks: Optional[int] = None
    gpu_memory_fraction: Optional[float] = None
    admission_batch: int = 1  # continuous and chunked (a static batch admits only when empty anyway)
    chunked_admission_batch: Optional[int] = None  # chunked only (None: admission_batch)

    def kwargs(self, policy: str) -> dict[str, Any]:
        kw = dict(block_size=self.block_size, max_num_seqs=self.max_num_seqs,
                  max_model_len=self.max_model_len,
                  admission_batch=(self.chunked_admission_batch or self.admission_batch) if policy == "chunked"
                  else self.admission_batch,
                  max_num_batched_tokens=self.chunk_tokens if policy == "chunked" else self.max_num_batched_tokens)
        if self.num_blocks is not None:
            kw["num_blocks"] = self.num_blocks
        elif self.gpu_memory_fraction is not None:
            kw["gpu_memory_fraction"] = self.gpu_memory_fraction
        return kw


def make_engine(model, policy: str, settings: EngineSettings, prefix_caching: bool = True,
                mixed_graphs: Optional[bool] = None):
    from scheduler import LLMEngine

    if model.model.embed_tokens.weight.is_cuda:
        gc.collect()
        torch.cuda.empty_cache()  # the previous engine's KV: free memory sizes this one's
    return LLMEngine(model, policy=policy, enable_prefix_caching=prefix_caching, mixed_cuda_graph=mixed_graphs,
                     **settings.kwargs(policy))


# ----------------------------------------------------------------------------
# Correctness gate
# ----------------------------------------------------------------------------


@dataclass
class CheckCase:
    prompt_ids: list[int]
    max_tokens: int
    ref_tokens: list[int] = field(default_factory=list)  # single-request greedy decoding


def prepare_check(model, cases: list[CheckCase]) -> None:
    """Single-request greedy references (decoding.generate). Call with no engine alive:
    generate installs (and removes) the model's static caches."""
    from decoding.generate import generate

    for c in cases:
        c.ref_tokens = generate(model, c.prompt_ids, c.max_tokens).new_ids[0]


def engine_outputs(engine, cases: list[CheckCase], policy: str) -> list[list[int]]:
    """The cases as one batch through `engine`: each case's generated ids."""
    from scheduler import SamplingParams

    ids = [engine.add_request(c.prompt_ids, SamplingParams(max_tokens=c.max_tokens, ignore_eos=True),
                              request_id=f"check{i}") for i, c in enumerate(cases)]
    final = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out.token_ids
    if engine.blocks_in_use():
        raise ParityError(f"{policy}: {engine.blocks_in_use()} KV blocks still in use after the check requests")
    return [final.get(rid, []) for rid in ids]


def teacher_forced_logits(model, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), V) fp32 CPU: the model's logits for each of `tokens` given the prompt and
    the tokens before it, in one no-cache forward (no engine may be alive)."""
    device = model.model.embed_tokens.weight.device
    ids = torch.tensor([prompt_ids + tokens[:-1]], device=device)
    t = len(prompt_ids)
    rows = torch.arange(t - 1, t - 1 + len(tokens), device=device)
    with torch.inference_mode():
        return model(ids, output_index=rows)[0].float().cpu()


def check_outputs(cases: list[CheckCase], outputs: list[list[int]], dtype: torch.dtype, policy: str,
                  logits_fn: Callable[[list[int], list[int]], torch.Tensor]) -> dict[str, Any]:
    """Compare the engine's tokens with single-request greedy decoding; raise ParityError.

    fp32: identical. fp16/bf16: from the first difference on, the engine's own sequence is
    checked teacher-forced (`logits_fn(prompt, tokens)`) by parity.ties.check_near_ties:
    every token the reference model's argmax or a near tie within the dtype's band.
    """
    from parity.ties import check_near_ties

    identical, near_ties = 0, []
    for i, (c, got) in enumerate(zip(cases, outputs)):
        if len(got) != c.max_tokens:
            raise ParityError(f"{policy}: check request {i} produced {len(got)} tokens, want {c.max_tokens}")
        j = next((k for k, (g, r) in enumerate(zip(got, c.ref_tokens)) if g != r), None)
        identical += c.max_tokens if j is None else j
        if j is None:
            continue
        where = (f"{policy}: check request {i} (prompt {len(c.prompt_ids)} tokens) differs from single-request "
                 f"greedy decoding at output {j}: engine {got[j]}, reference {c.ref_tokens[j]}")
        if dtype == torch.float32:
            raise ParityError(f"{where}; engine {got[:j + 3]}..., reference {c.ref_tokens[:j + 3]}...")
        try:
            gap = check_near_ties(logits_fn(c.prompt_ids, got)[j:], got[j:], dtype,
                                  f"{where}; teacher-forced on the engine's tokens from output {j}")
        except AssertionError as e:
            raise ParityError(str(e)) from None
        near_ties.append((i, j, gap))
    return {"tokens_identical": identical, "tokens": sum(c.max_tokens for c in cases), "near_ties": near_ties}


# ----------------------------------------------------------------------------
# Replay
# ----------------------------------------------------------------------------


@dataclass
class StepSample:
    t_s: float  # end of the step, from the start of the replay
    dt_s: float  # the step's wall time
    running: int
    waiting: int
    blocks_used: int
    slots_filled: int


@dataclass
class ReplayResult:
    policy: str
    records: list[dict[str, Any]]  # per request
    steps: list[StepSample]
    outputs: dict[int, list[int]]  # trace index -> generated ids
    preemptions: int
    usable_blocks: int
    block_size: int


def replay(engine, trace: list[TraceRequest], policy: str) -> ReplayResult:
    """Feed `trace` to `engine` in wall-clock time, step until every request finished."""
    from scheduler import RequestStatus, SamplingParams

    preempt0 = engine.scheduler.num_preemptions
    reqs: dict[int, Any] = {}  # trace index -> scheduler.Request (read after it finishes)
    steps: list[StepSample] = []
    n, i, idle_steps = len(trace), 0, 0
    t0 = time.perf_counter()
    while i < n or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while i < n and trace[i].arrival_s <= now:
            r = trace[i]
            rid = engine.add_request(r.prompt_ids, SamplingParams(max_tokens=r.max_tokens, ignore_eos=True),
                                     request_id=f"r{r.index}")
            reqs[i] = engine.scheduler.requests[rid]
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, trace[i].arrival_s - (time.perf_counter() - t0)))
            continue
        s0 = time.perf_counter()
        engine.step()
        s1 = time.perf_counter()
        sched = engine.scheduler
        used, filled = engine.kv_usage()
        steps.append(StepSample(s1 - t0, s1 - s0, len(sched.running), len(sched.waiting), used, filled))
        idle_steps = idle_steps + 1 if not sched.running and sched.waiting else 0
        if idle_steps > 1000:
            raise RuntimeError(f"{policy}: the engine admitted nothing for 1000 steps with "
                               f"{len(sched.waiting)} requests waiting")

    records, outputs = [], {}
    for idx, r in enumerate(trace):
        req = reqs.get(idx)
        if req is None or req.status != RequestStatus.FINISHED_LENGTH or req.num_output_tokens != r.max_tokens:
            got = None if req is None else (req.status.value, req.num_output_tokens)
            raise RuntimeError(f"{policy}: request {idx} did not complete (status, tokens) = {got}, want "
                               f"{r.max_tokens} tokens; a dropped request is an error")
        times = [t - t0 for t in req.token_times]
        n_out = len(times)
        first, last = times[0], times[-1]
        records.append({
            "policy": policy, "request": idx, "prompt_tokens": len(r.prompt_ids), "output_tokens": n_out,
            "arrival_s": r.arrival_s, "first_token_s": first, "finish_s": last,
            "ttft_s": first - r.arrival_s, "e2e_s": last - r.arrival_s,
            "tpot_s": (last - first) / (n_out - 1) if n_out > 1 else None,
            "itl_s": list(req.token_latencies),
            "preemptions": req.num_preemptions,
            "prefix_hit_tokens": req.num_prefix_hit_tokens,
        })
        outputs[idx] = list(req.output_token_ids)
    if engine.blocks_in_use():
        raise RuntimeError(f"{policy}: {engine.blocks_in_use()} KV blocks still in use after every request finished")
    return ReplayResult(policy, records, steps, outputs, engine.scheduler.num_preemptions - preempt0,
                        engine.pool.num_usable_blocks, engine.pool.block_size)


def warm_up(engine, trace: list[TraceRequest], n: int) -> float:
    """Run the trace's first n prompts (2 tokens each, all at once) through engine, untimed: the kernels'
    autotuning for the trace's prefill shapes happens here, not in a timed step. Returns seconds."""
    from scheduler import SamplingParams

    t0 = time.perf_counter()
    for r in trace[:n]:
        engine.add_request(r.prompt_ids, SamplingParams(max_tokens=2, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - t0


def summarize(res: ReplayResult) -> dict[str, Any]:
    """One row of figures for a policy (times in the unit of the key's suffix)."""
    recs = res.records
    first_arrival = min(r["arrival_s"] for r in recs)
    makespan = max(r["finish_s"] for r in recs) - first_arrival
    out_tokens = sum(r["output_tokens"] for r in recs)
    in_tokens = sum(r["prompt_tokens"] for r in recs)
    ttft = [r["ttft_s"] * 1e3 for r in recs]
    tpot = [r["tpot_s"] * 1e3 for r in recs if r["tpot_s"] is not None]
    itl = [g * 1e3 for r in recs for g in r["itl_s"]]
    e2e = [r["e2e_s"] for r in recs]
    q = common.percentile
    steps = res.steps
    busy = sum(s.dt_s for s in steps) or 1.0
    util = [s.blocks_used / res.usable_blocks for s in steps]
    waste = [1.0 - s.slots_filled / (s.blocks_used * res.block_size) for s in steps if s.blocks_used]
    peak = max(range(len(steps)), key=lambda k: steps[k].blocks_used) if steps else None
    return {
        "policy": res.policy,
        "completed": len(recs),
        "duration_s": makespan,
        "req_per_s": len(recs) / makespan,
        "out_tok_per_s": out_tokens / makespan,
        "total_tok_per_s": (out_tokens + in_tokens) / makespan,
        "ttft_p50_ms": q(ttft, 50), "ttft_p99_ms": q(ttft, 99),
        "tpot_p50_ms": q(tpot, 50) if tpot else None, "tpot_p99_ms": q(tpot, 99) if tpot else None,
        "itl_p50_ms": q(itl, 50) if itl else None, "itl_p99_ms": q(itl, 99) if itl else None,
        "e2e_p50_s": q(e2e, 50), "e2e_p99_s": q(e2e, 99),
        "preemptions": res.preemptions,
        "prefix_hit_pct": 100 * sum(r.get("prefix_hit_tokens", 0) for r in recs) / max(in_tokens, 1),
        "kv_util_mean": sum(u * s.dt_s for u, s in zip(util, steps)) / busy if steps else 0.0,
        "kv_util_peak": max(util) if util else 0.0,
        "kv_waste_mean": sum(waste) / len(waste) if waste else 0.0,
        "kv_waste_at_peak": waste_at(steps[peak], res.block_size) if peak is not None else 0.0,
        "mean_running": sum(s.running * s.dt_s for s in steps) / busy if steps else 0.0,
        "steps": len(steps),
        "usable_blocks": res.usable_blocks,
    }


def waste_at(s: StepSample, block_size: int) -> float:
    return 1.0 - s.slots_filled / (s.blocks_used * block_size) if s.blocks_used else 0.0


def measure_capacity(model, settings: EngineSettings, reqs: list[tuple[list[int], int]],
                     mean_output: float) -> tuple[float, str]:
    """Saturated requests/s of the continuous policy, and how it was measured (also the warmup).

    Every request of `reqs` (2 x max_num_seqs) arrives at t = 0. Output tokens are counted
    from the first step after the batch is full until the queue empties (max_num_seqs
    running, finished ones replaced at once: the steady state of a loaded engine) and
    divided by the mean output length of the trace. The rest is cancelled. If the window
    is under 8 steps, the whole run to completion is used instead.
    """
    from scheduler import SamplingParams

    engine = make_engine(model, "continuous", settings)
    sched = engine.scheduler
    try:
        for p, m in reqs:
            engine.add_request(p, SamplingParams(max_tokens=m, ignore_eos=True))
        t0 = time.perf_counter()
        start, tokens, steps, total = None, 0, 0, 0
        while engine.has_unfinished_requests():
            n = len(engine.step())
            now = time.perf_counter()
            total += n
            if start is None:
                if len(sched.running) >= settings.max_num_seqs or not sched.waiting:
                    start = now
                continue
            tokens, steps = tokens + n, steps + 1
            if not sched.waiting:
                break
        if steps >= 8 and now > start:
            how = f"continuous, {len(reqs)} requests at t = 0, {steps} steps while {settings.max_num_seqs} ran"
            rate = tokens / (now - start)
        else:
            while engine.has_unfinished_requests():
                total += len(engine.step())
            now = time.perf_counter()
            how = f"continuous, {len(reqs)} requests at t = 0, run to completion"
            rate = total / (now - t0)
        for rid in list(sched.requests):  # the unfinished ones
            engine.abort_request(rid)
    finally:
        engine.close()
    return rate / mean_output, how


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

COLUMNS = [("policy", "policy"), ("completed", "done"), ("req_per_s", "req/s"), ("out_tok_per_s", "out tok/s"),
           ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "p99"), ("tpot_p50_ms", "TPOT p50 ms"),
           ("tpot_p99_ms", "p99"), ("itl_p99_ms", "ITL p99 ms"), ("e2e_p50_s", "E2E p50 s"), ("e2e_p99_s", "p99"),
           ("preemptions", "preempt"), ("kv_util_mean_pct", "KV use mean %"), ("kv_util_peak_pct", "peak %"),
           ("kv_waste_mean_pct", "KV waste %"), ("mean_running", "running"), ("prefix_hit_pct", "prefix hit %"),
           ("check", "check")]

SUMMARY_KEYS = [  # (row key, record suffix, unit)
    ("req_per_s", "requests/s", "req/s"), ("out_tok_per_s", "output tok/s", "tok/s"),
    ("ttft_p50_ms", "ttft p50 ms", "ms"), ("ttft_p99_ms", "ttft p99 ms", "ms"),
    ("tpot_p50_ms", "tpot p50 ms", "ms"), ("tpot_p99_ms", "tpot p99 ms", "ms"),
    ("itl_p99_ms", "itl p99 ms", "ms"), ("e2e_p50_s", "e2e p50 s", "s"), ("e2e_p99_s", "e2e p99 s", "s"),
    ("preemptions", "preemptions", "count"), ("kv_util_mean", "kv util mean", "fraction"),
    ("kv_util_peak", "kv util peak", "fraction"), ("kv_waste_mean", "kv waste mean", "fraction"),
    ("prefix_hit_pct", "prefix hit", "%"),
]


def summary_records(rows: list[dict[str, Any]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        for key, suffix, unit in SUMMARY_KEYS:
            if r.get(key) is not None:
                out.append({"name": f"serving/{r['policy']} {suffix}", "value": r[key], "unit": unit, **extra})
    by = {r["policy"]: r for r in rows}
    for other in ("continuous", "chunked"):
        if other in by and "static" in by:
            out.append({"name": f"serving/{other} vs static throughput", "unit": "x", **extra,
                        "value": by[other]["out_tok_per_s"] / by["static"]["out_tok_per_s"]})
    return out


def _thin(xs: list, ys: list, n: int = 400) -> tuple[list, list]:
    step = max(1, len(xs) // n)
    return xs[::step], ys[::step]


def plot(path: Path, rows: list[dict[str, Any]], results: list[ReplayResult], title: str) -> Path:
    names = [r["policy"] for r in rows]

    def series(*keys_labels):
        return {label: (names, [r.get(k) for r in rows]) for k, label in keys_labels}

    util = {}
    running = {}
    for res in results:
        xs = [s.t_s for s in res.steps]
        util[res.policy] = _thin(xs, [100.0 * s.blocks_used / res.usable_blocks for s in res.steps])
        running[res.policy] = _thin(xs, [s.running for s in res.steps])
    panels = [
        {"title": "throughput", "ylabel": "output tokens/s", "series": series(("out_tok_per_s", "output tok/s")),
         "hlines": {"0": 0.0}},  # the axis starts at zero
        {"title": "time to first token", "ylabel": "ms", "logy": True,
         "series": series(("ttft_p50_ms", "p50"), ("ttft_p99_ms", "p99"))},
        {"title": "time per output token (per request) and inter-token gap", "ylabel": "ms",
         "series": series(("tpot_p50_ms", "TPOT p50"), ("tpot_p99_ms", "TPOT p99"), ("itl_p99_ms", "ITL p99"))},
        {"title": "end-to-end latency", "ylabel": "s", "series": series(("e2e_p50_s", "p50"), ("e2e_p99_s", "p99"))},
        {"title": "KV blocks in use, after each step", "xlabel": "s since first arrival", "ylabel": "% of usable",
         "series": util},
        {"title": "running requests, after each step", "xlabel": "s since first arrival", "ylabel": "requests",
         "series": running},
    ]
    return common.plot_panels(path, panels, title=title, ncols=3)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


@dataclass
class Options:
    """Everything main() decides from the flags (tests build one directly)."""

    device: str
    dtype: torch.dtype
    preset: str
    n_layers: Optional[int]
    weights: str
    checkpoint: Optional[str]
    policies: list[str]
    num_requests: int
    rate: float
    load: float
    prompt: LengthDist
    output: LengthDist
    settings_partial: dict[str, Any]
    check_requests: int
    check_tokens: int
    seed: int
    plot: bool
    cpu_threads: Optional[int] = 1
    profile_steps: int = 0
    shared_prefix_tokens: int = 0
    prefix_caching: str = "on"
    backend: str = "engine"  # engine, http, compare (bench/serving_http.py)
    profile_policy: str = "continuous"
    chunk_sizes: list[int] = field(default_factory=list)  # chunked once per budget ("chunked/<n>")
    mixed_graphs: str = "on"  # GPU: piecewise mixed-step graphs on, off, or both

    def __post_init__(self) -> None:
        """Bad settings, however the options were built: one ServingUsageError naming the flag."""
        bad = [p for p in self.policies if p not in POLICIES]
        if not self.policies or bad:
            raise ServingUsageError(f"--policies: expected some of {', '.join(POLICIES)}, "
                                    f"got {','.join(self.policies)}")
        if self.num_requests < 1:
            raise ServingUsageError(f"--num_requests must be >= 1, got {self.num_requests}")
        if not (self.rate == 0 or self.rate > 0):
            raise ServingUsageError(f"--rate must be > 0 requests/s (or 0: measure, inf: all at once), got {self.rate}")
        if not self.load > 0:
            raise ServingUsageError(f"--load must be > 0, got {self.load}")
        self.prompt.validate("prompt")
        self.output.validate("output")
        for name, v in [("cpu_threads", self.cpu_threads), ("check_tokens", self.check_tokens),
                        *self.settings_partial.items()]:
            if name != "gpu_memory_fraction" and v is not None and v < 1:
                raise ServingUsageError(f"--{name} must be >= 1, got {v}")
        if any(n < 1 for n in self.chunk_sizes):
            raise ServingUsageError(f"--chunk_sizes must be >= 1 each, got {self.chunk_sizes}")
        self.chunk_sizes = list(dict.fromkeys(self.chunk_sizes))  # in order, no repeats
        if self.shared_prefix_tokens < 0:
            raise ServingUsageError(f"--shared_prefix_tokens must be >= 0, got {self.shared_prefix_tokens}")
        if self.prefix_caching not in ("on", "off", "both"):
            raise ServingUsageError(f"--prefix_caching: expected on, off or both, got {self.prefix_caching!r}")
        if self.mixed_graphs not in ("on", "off", "both"):
            raise ServingUsageError(f"--mixed_graphs: expected on, off or both, got {self.mixed_graphs!r}")
        if self.profile_policy not in POLICIES:
            raise ServingUsageError(f"--profile_policy: expected one of {', '.join(POLICIES)}, got {self.profile_policy}")
        if self.profile_steps < 0:
            raise ServingUsageError(f"--profile_steps must be >= 0, got {self.profile_steps}")
        if self.check_requests < 0:
            raise ServingUsageError(f"--check_requests must be >= 0, got {self.check_requests}")
        fraction = self.settings_partial.get("gpu_memory_fraction")
        if fraction is not None and not 0 < fraction <= 1:
            raise ServingUsageError(f"--gpu_memory_fraction must be in (0, 1], got {fraction}")


def options_from_flags() -> Options:
    try:
        device = common.resolve_device(FLAGS.device)
        dtype = common.lab_device.resolve_dtype(FLAGS.dtype, device)
    except ValueError as e:  # model.device.UsageError: names the flag
        raise ServingUsageError(str(e)) from None
    cuda = common.is_cuda(device)
    cpu = not cuda
    num = FLAGS.num_requests if FLAGS.num_requests is not None else (512 if FLAGS.full else 48 if cpu else 256)

    def dist(what, median, lo, hi):
        def flag(name, default):
            v = getattr(FLAGS, f"{what}_{name}")
            return default if v is None else v

        return LengthDist(FLAGS.len_dist, flag("median", median), flag("sigma", None), flag("min", lo), flag("max", hi))

    prompt = dist("prompt", *((48, 4, 144) if cpu else (256, 16, 1024)))
    output = dist("output", *((48, 4, 104) if cpu else (128, 16, 512)))
    preset = FLAGS.preset or (EMBEDDED if cpu else "llama3-8b")
    settings = dict(block_size=FLAGS.block_size, max_num_seqs=FLAGS.max_num_seqs or (16 if cpu else 64),
                    max_model_len=FLAGS.max_model_len, max_num_batched_tokens=FLAGS.max_num_batched_tokens,
                    chunk_tokens=FLAGS.chunk_tokens or (128 if cpu else 2048), num_blocks=FLAGS.num_blocks,
                    gpu_memory_fraction=FLAGS.gpu_memory_fraction if cuda else None,
                    admission_batch=FLAGS.admission_batch, chunked_admission_batch=FLAGS.chunked_admission_batch)
    return Options(device, dtype, preset, FLAGS.n_layers, FLAGS.weights, FLAGS.checkpoint,
                   list(FLAGS.policies or []), num, FLAGS.rate, FLAGS.load, prompt, output, settings,
                   FLAGS.check_requests, FLAGS.check_tokens, FLAGS.seed, FLAGS.plot, FLAGS.cpu_threads,
                   FLAGS.profile_steps, FLAGS.shared_prefix_tokens, FLAGS.prefix_caching, FLAGS.backend,
                   FLAGS.profile_policy, _chunk_sizes(FLAGS.chunk_sizes), FLAGS.mixed_graphs)


def _chunk_sizes(values: Optional[list[str]]) -> list[int]:
    try:
        return common.int_list(values, [])
    except ValueError:
        raise ServingUsageError(f"--chunk_sizes: expected integers, got {','.join(values or [])}") from None


def resolve_settings(opts: Options, model) -> EngineSettings:
    s = dict(opts.settings_partial)
    context = model.config.max_seq_len
    cuda = common.is_cuda(opts.device)
    s["max_model_len"] = s["max_model_len"] or (min(context, 4096) if cuda else context)
    if s["max_model_len"] > context:
        raise ServingUsageError(f"--max_model_len {s['max_model_len']} exceeds the model context {context}")
    s["max_num_batched_tokens"] = s["max_num_batched_tokens"] or max(s["max_model_len"], 16384 if cuda else 2048)
    if s.setdefault("admission_batch", 1) > s["max_num_seqs"]:
        raise ServingUsageError(f"--admission_batch {s['admission_batch']} exceeds --max_num_seqs {s['max_num_seqs']}")
    if (s.get("chunked_admission_batch") or 1) > s["max_num_seqs"]:
        raise ServingUsageError(f"--chunked_admission_batch {s['chunked_admission_batch']} exceeds --max_num_seqs "
                                f"{s['max_num_seqs']}")
    longest = opts.shared_prefix_tokens + opts.prompt.hi + opts.output.hi
    if longest > s["max_model_len"]:
        raise ServingUsageError(f"--shared_prefix_tokens + --prompt_max + --output_max = {longest} tokens exceeds "
                                f"--max_model_len "
                                f"{s['max_model_len']}; lower them")
    if longest > s["max_num_batched_tokens"] and any(p != "chunked" for p in opts.policies):
        raise ServingUsageError(f"--max_num_batched_tokens {s['max_num_batched_tokens']} is below the longest request "
                                f"({longest} tokens): static and continuous run a prompt (or a recompute) in one step")
    if s["num_blocks"] is not None:
        need = -(-longest // s["block_size"]) + 1
        if s["num_blocks"] < need:
            raise ServingUsageError(f"--num_blocks {s['num_blocks']} cannot hold the longest request ({longest} "
                                    f"tokens = {need - 1} blocks of {s['block_size']}, plus the null block)")
    return EngineSettings(**s)


def run(opts: Options, out_dir: Optional[Path] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; returns {"rows", "results", "paths", ...}. Raises ParityError before timing."""
    threads = torch.get_num_threads()
    if opts.cpu_threads and not common.is_cuda(opts.device):
        torch.set_num_threads(opts.cpu_threads)
    try:
        return _run(opts, out_dir, log)
    finally:
        torch.set_num_threads(threads)


def _run(opts: Options, out_dir: Optional[Path], log_line: Callable[[str], None]) -> dict[str, Any]:
    t_start = time.perf_counter()

    def log(msg: str) -> None:  # elapsed seconds first: where a long GPU run spends its time
        log_line(f"[{time.perf_counter() - t_start:7.1f} s] {msg}")

    cuda = common.is_cuda(opts.device)
    dev_name = common.device_name(opts.device)
    copy_gbps = common.measure_copy_bandwidth(opts.device)  # before the engines take the memory
    model = build_model(opts.preset, opts.n_layers, opts.weights, opts.device, opts.dtype, opts.seed, opts.checkpoint)
    settings = resolve_settings(opts, model)
    vocab = model.config.vocab_size
    wbytes = common.weight_bytes(model)
    model_name = opts.checkpoint or (opts.preset + (f" ({model.config.n_layers} layers)" if opts.n_layers else ""))
    model_desc = (f"{model_name}, {opts.weights if not opts.checkpoint else 'checkpoint'} weights, "
                  f"{common.dtype_name(opts.dtype)}, {wbytes / 2**20:,.1f} MiB of weights, vocab {vocab}")
    log(f"serving on {dev_name}, {common.today()}, torch {torch.__version__}: {model_desc}")
    if cuda:
        log(f"copy bandwidth (1 GiB, read + write): {copy_gbps:,.0f} GB/s; reading the weights once per decode "
            f"step bounds it at {copy_gbps * 1e9 / wbytes:,.1f} steps/s")
    else:
        log(f"CPU run: CPU figures, a test of the harness and the policies, not a GPU measurement; "
            f"{torch.get_num_threads()} torch thread(s); copy bandwidth (64 MiB) {copy_gbps:,.1f} GB/s, context "
            f"only (the tiny model is host-overhead bound)")

    # Correctness gate, every policy, before anything is timed. The reference forwards
    # (generate's static caches, teacher-forced logits) run while no engine is alive.
    exact = opts.dtype == torch.float32
    cases = [CheckCase(p, min(m, opts.check_tokens))
             for p, m in draw_requests(opts.check_requests, opts.prompt, opts.output, vocab, opts.seed + 2)]
    prepare_check(model, cases)
    trace = build_trace(opts.num_requests, 1.0, opts.prompt, opts.output, vocab, opts.seed)
    if opts.shared_prefix_tokens:
        trace = with_shared_prefix(trace, opts.shared_prefix_tokens, vocab, opts.seed)
    checks: dict[str, dict[str, Any]] = {}
    warm_s: dict[str, float] = {}
    for policy in opts.policies:
        engine = make_engine(model, policy, settings)
        try:
            outputs = engine_outputs(engine, cases, policy) if cases else None
            # The kernels' autotuning for the trace's shapes happens here, untimed; the timed run
            # gets a fresh engine (nothing of the trace in its prefix cache).
            warm_s[policy] = warm_up(engine, trace, 2 * settings.max_num_seqs)
        finally:
            engine.close()
        if outputs is None:
            continue
        checks[policy] = c = check_outputs(cases, outputs, opts.dtype, policy,
                                           lambda p, t: teacher_forced_logits(model, p, t))
        ties = "; ".join(f"request {i} from output {j} (largest gap {gap:.2g} of max|logit|)"
                         for i, j, gap in c["near_ties"])
        log(f"check {policy}: {c['tokens_identical']}/{c['tokens']} tokens identical to single-request greedy "
            f"decoding" + (f"; near-tie divergences (parity.ties band): {ties}" if ties else ""))

    stats = trace_stats(trace)
    rate, capacity = opts.rate, None
    if rate == 0:
        warm = draw_requests(2 * settings.max_num_seqs, opts.prompt, opts.output, vocab, opts.seed + 1)
        log(f"measuring capacity: {len(warm)} requests at t = 0 under continuous ...")
        capacity, how = measure_capacity(model, settings, warm, stats["output_mean"])
        rate = opts.load * capacity
        log(f"measured capacity: {capacity:.2f} requests/s ({how}); rate = {opts.load:g} x capacity = "
            f"{rate:.2f} requests/s")
    trace = with_rate(trace, rate, opts.seed)
    kv = (f"{settings.num_blocks} blocks" if settings.num_blocks else
          f"{settings.gpu_memory_fraction:g} of free GPU memory" if cuda else
          f"{settings.max_num_seqs} full-length requests")
    log(f"trace: {opts.num_requests} requests, Poisson arrivals at {rate:.3g} requests/s (seed {opts.seed}), "
        f"last arrival at {trace[-1].arrival_s:.2f} s\n"
        f"  prompt lengths: {opts.prompt.describe()}; drawn mean {stats['prompt_mean']:.1f}, p50 "
        f"{stats['prompt_p50']:.0f}, max {stats['prompt_max']}; ids uniform in [0, {vocab})\n"
        f"  output lengths: {opts.output.describe()}; drawn mean {stats['output_mean']:.1f}, p50 "
        f"{stats['output_p50']:.0f}, max {stats['output_max']}; greedy, EOS ignored\n"
        f"engine: block {settings.block_size}, max_num_seqs {settings.max_num_seqs}, max_model_len "
        f"{settings.max_model_len}, step budget {settings.max_num_batched_tokens} tokens (static, continuous), "
        f"{settings.chunk_tokens} (chunked), KV {kv}"
        + (f", admission batch {settings.admission_batch}" if settings.admission_batch > 1 else "")
        + (f" (chunked {settings.chunked_admission_batch})" if settings.chunked_admission_batch else ""))

    rows, results = [], []
    caching = {"on": [True], "off": [False], "both": [True, False]}[opts.prefix_caching]
    # mixed-step graphs exist only beside the decode graphs (a GPU); None: the engine's default
    mixed = {"on": [True], "off": [False], "both": [True, False]}[opts.mixed_graphs] if cuda else [None]
    runs = [(p, n, c, m) for p in opts.policies for n in (opts.chunk_sizes if p == "chunked" and opts.chunk_sizes
                                                           else [None]) for c in caching for m in mixed]
    for policy, chunk, cached, mixed_on in runs:
        name = (policy + (f"/{chunk}" if chunk else "") + ("" if cached else "/no-prefix-cache")
                + ("/eager-mixed" if mixed_on is False else ""))
        engine = make_engine(model, policy, replace(settings, chunk_tokens=chunk) if chunk else settings,
                             prefix_caching=cached, mixed_graphs=mixed_on)
        graphs, pieces = engine.runner.graphs, engine.runner.mixed
        try:
            log(f"running {name} (warm-up {warm_s[policy]:.1f} s before, not timed; this engine's attention "
                f"autotune {engine.tune_s:.1f} s, decode CUDA-graph capture {graphs.capture_s if graphs else 0:.1f} s"
                f" and mixed-step piecewise capture {pieces.capture_s if pieces else 0:.1f} s "
                f"({len(pieces.buckets) if pieces else 0} token buckets) at start-up) ...")
            res = replay(engine, trace, name)
        finally:
            engine.close()
        results.append(res)
        log(f"{name} done")
        row = summarize(res)
        c = checks.get(policy)
        row["check"] = "not run" if c is None else f"ok, {len(c['near_ties'])} near tie(s)" if c["near_ties"] else "ok"
        if cuda:
            row["decode_bound_tok_per_s"] = row["mean_running"] * copy_gbps * 1e9 / wbytes
        row.update({"kv_util_mean_pct": 100 * row["kv_util_mean"], "kv_util_peak_pct": 100 * row["kv_util_peak"],
                    "kv_waste_mean_pct": 100 * row["kv_waste_mean"]})
        rows.append(row)

    # Same prompts, greedy: the policies must agree (fp32 exactly; low precision may part at near ties).
    base = results[0]
    differ = {r.policy: sum(r.outputs[k] != base.outputs[k] for k in base.outputs) for r in results[1:]}
    if differ:
        log(f"outputs vs {base.policy}: "
            + ", ".join(f"{p} {n}/{len(trace)} requests differ" for p, n in differ.items()))
    if exact and any(differ.values()):
        raise ParityError(f"fp32 outputs differ between policies on the same trace: {differ}")

    title = (f"bench.serving: {model_name} {common.dtype_name(opts.dtype)} on {dev_name}, {common.today()}, "
             f"{opts.num_requests} requests at {rate:.3g}/s" + (" (CPU run)" if not cuda else ""))
    common.print_table(rows, COLUMNS, title="\n" + title)
    report_lines(rows, settings, stats, log)

    trace_info = {"num_requests": opts.num_requests, "rate_rps": rate, "capacity_rps": capacity,
                  "prompt_dist": opts.prompt.describe(), "output_dist": opts.output.describe(), **stats}
    meta = {"trace": trace_info, "engine": settings.__dict__, "model": model_desc, "copy_gbps": copy_gbps,
            "weight_bytes": wbytes, "seed": opts.seed, "checks": checks}
    paths: dict[str, Path] = {}
    if out_dir is not None:
        extra = {"model": model_name, "dtype": common.dtype_name(opts.dtype), "num_requests": opts.num_requests,
                 "rate_rps": rate}
        paths = write_all(out_dir, rows, results, trace_info, meta, extra, dev_name)
        if opts.plot:
            paths["png"] = plot(out_dir / "serving.png", rows, results, title)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    profile = None
    if opts.profile_steps:
        from bench.serving_profile import profile_steps

        reqs = draw_requests(2 * settings.max_num_seqs, opts.prompt, opts.output, vocab, opts.seed + 3)
        engine = make_engine(model, opts.profile_policy, settings)
        try:
            log(f"profiling {opts.profile_steps} steps of {opts.profile_policy} at full load ...")
            profile = profile_steps(engine, reqs, settings.max_num_seqs, opts.profile_steps, out_dir, log)
        finally:
            engine.close()
    return {"rows": rows, "results": results, "paths": paths, "rate": rate, "checks": checks, "trace": trace,
            "meta": meta, "profile": profile}


def report_lines(rows: list[dict[str, Any]], settings: EngineSettings, stats: dict[str, float],
                 log: Callable[[str], None]) -> None:
    """The ratios, the GPU bound and the KV waste under the table."""
    by = {r["policy"]: r for r in rows}
    if "static" in by:
        ratios = [f"{p} / static throughput: {by[p]['out_tok_per_s'] / by['static']['out_tok_per_s']:.2f}x"
                  for p in ("continuous", "chunked") if p in by]
        if ratios:
            log("; ".join(ratios))
    bound = [f"{r['policy']} {r['decode_bound_tok_per_s']:,.0f} tok/s "
             f"({100 * r['out_tok_per_s'] / r['decode_bound_tok_per_s']:.0f}% reached)"
             for r in rows if r.get("decode_bound_tok_per_s")]
    if bound:
        log("weight-streaming decode bound at each policy's mean running batch (prefill and KV reads ignored): "
            + ", ".join(bound))
    for p in [p for p in by if f"{p}/no-prefix-cache" in by]:
        on, off = by[p], by[f"{p}/no-prefix-cache"]
        log(f"prefix cache, {p}: {on['prefix_hit_pct']:.1f}% of prompt tokens hit; TTFT p50 {on['ttft_p50_ms']:,.1f} "
            f"ms against {off['ttft_p50_ms']:,.1f} without it ({off['ttft_p50_ms'] / on['ttft_p50_ms']:.2f}x), "
            f"out tok/s {on['out_tok_per_s']:,.0f} against {off['out_tok_per_s']:,.0f}")
    swept = [r for r in rows if r["policy"].startswith("chunked/") and r["policy"][8:].isdigit()]
    if swept and "continuous" in by:
        c = by["continuous"]
        log("chunk budget sweep against continuous (throughput ratio; p99 TPOT chunked vs continuous): " + ", ".join(
            f"{r['policy'][8:]} tokens {r['out_tok_per_s'] / c['out_tok_per_s']:.2f}x, {r['tpot_p99_ms']:.1f} vs "
            f"{c['tpot_p99_ms']:.1f} ms" for r in swept))
        best = max(swept, key=lambda r: r["out_tok_per_s"])
        both = [r for r in swept if r["out_tok_per_s"] >= c["out_tok_per_s"] and r["tpot_p99_ms"] <= c["tpot_p99_ms"]]
        log(f"fastest budget {best['policy'][8:]} tokens; beating continuous on both throughput and p99 TPOT: "
            + (", ".join(r["policy"][8:] for r in both) or "none"))
    wastes = ", ".join(f"{r['policy']} {r['kv_waste_mean_pct']:.1f}%" for r in rows)
    log(f"KV waste (allocated slots without a token, mean over steps): {wastes}; block {settings.block_size}, "
        f"mean request {stats['prompt_mean'] + stats['output_mean']:.0f} tokens (prompt + output)")


def write_all(out_dir: Path, rows: list[dict[str, Any]], results: list[ReplayResult], trace_info: dict[str, Any],
              meta: dict[str, Any], extra: dict[str, Any], dev_name: str) -> dict[str, Path]:
    """serving.{csv,json} (a row per policy) + summary.json records, serving_requests.*, serving_steps.*,
    serving_meta.json (trace, engine, gate)."""
    import json

    command = common.command_line("serving")
    csv_rows = [{**r, **{f"trace_{k}": v for k, v in trace_info.items()}} for r in rows]
    records = summary_records(rows, extra)
    records.append({"name": "serving/copy_bandwidth GB/s", "value": meta["copy_gbps"], "unit": "GB/s"})
    paths = common.write_results(out_dir, "serving", csv_rows, records, command=command, device=dev_name)
    req_rows = [{k: v for k, v in rec.items() if k != "itl_s"} for res in results for rec in res.records]
    step_rows = [{"policy": res.policy, **s.__dict__} for res in results for s in res.steps]
    for name, table in (("requests", req_rows), ("steps", step_rows)):
        p = common.write_results(out_dir, f"serving_{name}", table, [], command=command, device=dev_name)
        paths[f"{name}_csv"] = p["csv"]
    paths["meta"] = out_dir / "serving_meta.json"
    paths["meta"].write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return paths


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ServingUsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    opts = options_from_flags()
    if opts.backend == "engine":
        run(opts, common.results_dir("serving", opts.device))
        return
    from bench import serving_http

    if not FLAGS["policies"].present:
        opts.policies = ["chunked"]  # the server's default policy
    if opts.backend == "http":
        serving_http.run_http(opts, FLAGS.url.rstrip("/"), FLAGS.http_api_key, common.results_dir("serving", opts.device))
        return
    if not opts.checkpoint:
        opts.checkpoint = "lab-small"
    threads = torch.get_num_threads()
    if opts.cpu_threads and not common.is_cuda(opts.device):
        torch.set_num_threads(opts.cpu_threads)
    try:
        serving_http.compare(opts, common.results_dir("serving", opts.device), FLAGS.overload,
                             tokenizer=FLAGS.server_tokenizer,
                             repeats=FLAGS.repeats or (1 if common.is_cuda(opts.device) else 2))
    finally:
        torch.set_num_threads(threads)


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except ServingUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"WRONG, nothing timed: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # bench.serving_http.HTTPReplayError: a wrong answer or an unclean server
        if type(e).__name__ != "HTTPReplayError":
            raise
        print(f"WRONG: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(_main)
