"""Prefill experiments: KV cache vs recompute, uniform vs mixed lengths, single vs batched, batch size.

Question: what does a prompt cost to prefill, and how does that change with the KV cache,
with the shape of the batch and with its size?

  python3 -m bench.prefill                                   # CPU: embedded tiny model, < 1 min
  python3 -m bench.prefill --experiments=batch_size --batch_sizes=1,4,16,64 --prompt_len=128
  bazel run //bench:prefill -- --preset=llama3-8b --n_layers=8 --prompt_len=1024   # GPU: random weights, bf16

Experiments (--experiments, default all four):
  kv_cache    N new greedy tokens after a P-token prompt (batch 1), decoding.generate with
              use_cache=False (every step recomputes the whole sequence) against
              use_cache=True (static KV cache): time per generated token vs N at P =
              --gen_prompt_len, and vs P at N = --gen_new_tokens.
  mixed       B prompts all of length L against B prompts of mixed lengths with the same
              total (B * L) tokens (lengths spread linearly from L/4 to 7L/4), each through
              three paths: `padded` (one (B, max_len) forward right-padded, static KV cache,
              what decoding.generate does), `packed` (one flat (1, sum_len) forward over the
              paged KV cache, varlen attention per request, its metadata built outside the
              timed call) and `engine` (scheduler.LLM.generate, max_tokens=1, static policy:
              schedule + metadata + the packed forward + sampling in one step). Wasted
              tokens = padded positions computed and thrown away.
  batching    the same B prompts of length L prefilled one at a time (B forwards of (1, L))
              against one (B, L) forward: total time and tokens/s.
  batch_size  one (B, L) prefill for each B in --batch_sizes: time, tokens/s and TFLOP/s.

Every prefill returns the logits of each prompt's last position only (as an engine does).
FLOPs are useful work: 2 * (decoder Linear weights) * tokens + 2 * dim * vocab per prompt
(the LM head on its last position) + causal attention 4 * layers * heads * head_dim *
L(L+1)/2 per prompt; padded positions are not counted. The ceiling is the measured matmul
rate (bench.common.measure_matmul_tflops: 8192^3 on a GPU in the model's dtype); on a CPU
the 512^3 figure is printed but the run is a CPU run: Python overhead, not matmuls, rules it.

Checks, before anything is timed (a wrong configuration is reported WRONG, never timed,
and the run exits 1 once its results are written; so does a FAILED one, out of memory
included): every prefill's last-position logits against a reference computed
one prompt at a time without any cache (same weights, same dtype); the engine's greedy
token against the reference's argmax (a different token is accepted only as a near tie,
parity.ties' band for the dtype) and its step count (one); kv_cache:
the cached loop's logits at every step against one recompute of the whole sequence (teacher
forced on the uncached tokens), and in fp32 identical greedy tokens.
Tolerance: every row (prompt, or generation step) must have a relative L2 error
||got - want|| / ||want|| over the vocabulary <= rtol (NaN/Inf fail); --rtol overrides.
fp32 1e-4: batched vs single and cached vs recomputed differ only in summation order (GEMM
  blocking changes with the batch, masked vs causal SDPA kernels): measured <= 1.3e-6 on the
  tiny shape with model.load's random weights at 4 to 32 layers, where a real bug gives 0.14 to 0.99
  (a pad token visible to the last token 0.14-0.28, the first token dropped so every
  position is off by one 0.43-0.67, the first token changed 0.53-0.99).
bf16 5e-2: both sides run in bf16 (8 mantissa bits, 2^-9 per rounding), and a different batch
  shape picks different GEMM tiles / SDPA kernels, so every layer's output rounds differently
  and the differences add up with depth: measured 0.010 (4 layers) to 0.019 (32 layers), single
  vs padded mixed batch and cached vs recomputed; 5e-2 is 2.5x the 32-layer figure and ~3x
  below the smallest bug above. (Elementwise, the same noise reaches 0.07 of 1 + |logit| on
  single logits, so an elementwise 2e-2 would fail correct bf16 runs.) GPU kernels differ
  from the CPU's: a correct run failing here on a deep model is the case for --rtol.
fp16 1e-2 (3 more mantissa bits than bf16).

Model: on a CPU the embedded tiny model (model/embedded.py: 4 layers, dim 64, vocab 258);
on a GPU --preset (default llama3-8b) with random weights made on the device
(model.load: meta-device build, model/random_weights.py's recipe: N(0, 1/fan_in) matrices,
N(0, 0.1) embeddings, U(0.5, 1.5) norms), --n_layers to change its depth. --preset=embedded runs the tiny model
anywhere; any model.config preset name runs anywhere (a CPU needs the memory).

Timing (bench.common.time_fn): CUDA events after an L2 flush on a GPU, perf_counter on a
CPU; p10/p50/p90 over --iters calls (--gen_iters for the generation loops) after --warmup.
Results: prefill.csv/json, summary.json records and prefill.png in bench.common.results_dir.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from absl import app
from torch import nn

from bench import common
from parity.ties import check_near_ties

EXPERIMENTS = ("kv_cache", "mixed", "batching", "batch_size")
TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}  # per-row relative L2; why: module docstring
PATHS = ("padded", "packed", "engine")  # the mixed experiment's prefill paths

# Defaults: CPU ones keep the whole run under a minute on 2 cores; GPU ones are Llama-3-8B
# sized work (a chat prompt of 512 tokens, batches to 32, 2k-token prompts for recompute).
CPU_DEFAULTS = dict(preset="embedded", dtype="fp32", prompt_len=64, batch=8, batch_sizes=(1, 2, 4, 8, 16),
                    gen_prompt_len=32, new_tokens=(8, 16, 32, 64), gen_prompt_lens=(16, 64, 128, 192),
                    gen_new_tokens=16, warmup=1, iters=5, gen_iters=3)
GPU_DEFAULTS = dict(preset="llama3-8b", dtype="bf16", prompt_len=512, batch=8, batch_sizes=(1, 2, 4, 8, 16, 32),
                    gen_prompt_len=128, new_tokens=(16, 32, 64, 128), gen_prompt_lens=(128, 512, 1024, 2048),
                    gen_new_tokens=32, warmup=2, iters=10, gen_iters=3)

# Flags other lab modules define too (bench.compile, bench.kernels, bench.perplexity,
# train.*), with the same types: defined once per process so pytest can import the bench
# modules side by side. Ours yields to one made before and allows override by one made after.
_define = common.define_flag


_define("list", "experiments", list(EXPERIMENTS), "Experiments to run, of: " + ", ".join(EXPERIMENTS)
        + " (default: all).")
_define("string", "preset", None, "Model: 'embedded' (the tiny model of model/embedded.py) or a model.config "
        "preset with random weights (llama3-8b, llama2-7b, tiny, ...). Default embedded on a CPU, llama3-8b on a GPU.")
_define("integer", "n_layers", None, "Keep only this many decoder layers (shrinks a preset to fit or to run "
        "quickly). Default: all.")
_define("string", "device", None, "cuda, cuda:N or cpu. Default (or auto) cuda when a GPU is visible, else cpu.")
_define("string", "dtype", None, "Model dtype: bf16, fp16, fp32. Default bf16 on a GPU, fp32 on a CPU.")
_define("integer", "prompt_len", None, "L of the mixed, batching and batch_size experiments, tokens. Default 512 "
        "on a GPU, 64 on a CPU.")
_define("integer", "batch", None, "B of the mixed and batching experiments, prompts. Default 8.")
_define("list", "batch_sizes", None, "Batch sizes of the batch_size experiment. Default 1,2,4,8,16,32 on a GPU, "
        "1,2,4,8,16 on a CPU.")
_define("integer", "gen_prompt_len", None, "kv_cache: prompt length P of the sweep over N, tokens. Default 128 "
        "on a GPU, 32 on a CPU.")
_define("list", "new_tokens", None, "kv_cache: numbers of new tokens N swept at --gen_prompt_len. Default "
        "16,32,64,128 on a GPU, 8,16,32,64 on a CPU.")
_define("list", "gen_prompt_lens", None, "kv_cache: prompt lengths P swept at --gen_new_tokens. Default "
        "128,512,1024,2048 on a GPU, 16,64,128,192 on a CPU.")
_define("integer", "gen_new_tokens", None, "kv_cache: new tokens N of the sweep over P. Default 32 on a GPU, "
        "16 on a CPU.")
_define("integer", "block_size", 16, "Paged KV block size of the packed and engine paths, tokens.")
_define("float", "rtol", None, "Check tolerance: largest relative L2 error of a row of logits (module docstring "
        "says why). Default 1e-4 fp32, 5e-2 bf16, 1e-2 fp16.")
_define("integer", "warmup", None, "Untimed calls per prefill configuration, count. Default 2 on a GPU, 1 on a CPU.")
_define("integer", "iters", None, "Timed calls per prefill configuration, count. Default 10 on a GPU, 5 on a CPU.")
_define("integer", "gen_iters", None, "Timed generate() calls per kv_cache configuration (after one untimed "
        "call), count. Default 3.")
_define("integer", "seed", 0, "Seed of the prompts and of the random weights.")
_define("boolean", "plot", True, "Write prefill.png (one panel per experiment, two for kv_cache and batch_size).")


@dataclass(frozen=True)
class Options:
    """One run, as the flags above give it (main reads them once; tests build one directly).
    None picks the device's default (CPU_DEFAULTS, GPU_DEFAULTS), as each flag's help says."""

    experiments: tuple[str, ...] | None
    preset: str | None
    n_layers: int | None
    device: str | None
    dtype: str | None
    prompt_len: int | None
    batch: int | None
    batch_sizes: tuple[str, ...] | None
    gen_prompt_len: int | None
    new_tokens: tuple[str, ...] | None
    gen_prompt_lens: tuple[str, ...] | None
    gen_new_tokens: int | None
    block_size: int
    rtol: float | None
    warmup: int | None
    iters: int | None
    gen_iters: int | None
    seed: int
    plot: bool


class PrefillError(ValueError):
    """Bad input (flags, lengths): printed as one `error: ...` line, exit 2."""


# ----------------------------------------------------------------------------
# Model, prompts, references
# ----------------------------------------------------------------------------


@dataclass
class Run:
    """The model and everything every experiment shares."""

    model: nn.Module
    label: str
    device: str
    dtype: torch.dtype
    rtol: float
    warmup: int
    iters: int
    gen_iters: int
    seed: int
    block_size: int
    linear_params: int  # weights of the decoder layers' Linear modules (the 2 * params * tokens of FLOPs)
    _refs: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len


def model_context(preset: str) -> int:
    """The context (max_seq_len) of --preset, without building its weights; PrefillError for an unknown one."""
    return _preset_config(preset).max_seq_len


def _preset_config(preset: str, n_layers: Optional[int] = None):
    """--preset's config ('embedded' or a model.config preset) with --n_layers, or PrefillError."""
    from model.config import ConfigError
    from model.loader import random_config

    try:
        return random_config(preset, n_layers=n_layers)
    except ConfigError as e:
        raise PrefillError(f"--preset/--n_layers: {e}") from None


def build_model(preset: str, n_layers: Optional[int], device: str, dtype: torch.dtype,
                seed: int) -> tuple[nn.Module, str]:
    """(model in eval mode on device/dtype, a label): model.load of 'embedded' (its own weights) or of
    a model.config preset with random weights (seed `seed`); --n_layers changes the layer count."""
    import model
    from model.embedded import EMBEDDED_SEED

    config = _preset_config(preset, n_layers)
    if preset == "embedded":
        return (model.load(config, dtype=dtype, device=device, seed=EMBEDDED_SEED),
                f"embedded tiny ({config.n_layers} layers)")
    return model.load(config, dtype=dtype, device=device, seed=seed), f"{preset} ({config.n_layers} layers, random weights)"


def linear_weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))


def make_run(preset: str = "embedded", n_layers: Optional[int] = None, device: str = "cpu",
             dtype: torch.dtype = torch.float32, rtol: Optional[float] = None, warmup: int = 1, iters: int = 5,
             gen_iters: int = 3, seed: int = 0, block_size: int = 16) -> Run:
    """Build the model and the Run every experiment takes (rtol None: TOL of the dtype)."""
    model, label = build_model(preset, n_layers, device, dtype, seed)
    return Run(model, label, device, dtype, TOL[dtype] if rtol is None else rtol, warmup, iters, gen_iters, seed,
               block_size, linear_weight_count(model))


def make_prompts(run: Run, lens: list[int], salt: int) -> list[list[int]]:
    """Random token ids, one list per length; the same (seed, salt, lens) gives the same prompts."""
    g = torch.Generator().manual_seed(run.seed * 1_000_003 + salt)
    return [torch.randint(0, run.config.vocab_size, (n,), generator=g).tolist() for n in lens]


def spread_lengths(batch: int, length: int) -> list[int]:
    """`batch` lengths spread linearly from length/4 to 7*length/4, summing to batch * length exactly."""
    if batch == 1:
        return [length]
    lens = [max(1, round(length * (0.25 + 1.5 * i / (batch - 1)))) for i in range(batch)]
    lens[-1] += batch * length - sum(lens)
    return lens


def reference_logits(run: Run, prompts: list[list[int]]) -> torch.Tensor:
    """(B, V) fp32 on the CPU: each prompt's last-position logits, one prompt at a time, no cache."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            key = tuple(p)
            if key not in run._refs:
                ids = torch.tensor([p], device=run.device)
                last = torch.tensor([len(p) - 1], device=run.device)
                run._refs[key] = run.model(ids, output_index=last)[0, 0].float().cpu()
            out.append(run._refs[key])
    return torch.stack(out)


def relative_errors(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per row (every leading index) ||got - want|| / ||want|| over the last dim, fp32 on the CPU."""
    g, w = got.detach().float().cpu(), want.detach().float().cpu()
    return (g - w).norm(dim=-1) / w.norm(dim=-1).clamp_min(1e-30)


def check_logits(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> float:
    """Raise AssertionError unless every row of got (..., V) is within relative L2 error rtol of
    want's (the module docstring says why); return the largest row error."""
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not bool(torch.isfinite(got).all()):
        raise AssertionError(f"{what}: {int((~torch.isfinite(got)).sum())} of {got.numel()} logits are NaN/Inf")
    rel = relative_errors(got, want)
    worst = float(rel.max())
    if worst > rtol:
        idx = tuple(int(i) for i in torch.unravel_index(rel.argmax(), rel.shape))
        max_err = float((got.float().cpu() - want.float().cpu()).abs().max())
        raise AssertionError(f"{what}: {int((rel > rtol).sum())} of {rel.numel()} rows outside rtol={rtol:g} "
                             f"({common.dtype_name(got.dtype)}, relative L2 over the vocabulary); worst row {idx}: "
                             f"{worst:.3g}, max |err| {max_err:.3g}")
    return worst


# ----------------------------------------------------------------------------
# Prefill paths: each returns (fn, teardown); fn() runs one prefill and returns (B, V) logits
# ----------------------------------------------------------------------------


def padded_prefill(run: Run, prompts: list[list[int]]) -> tuple[Callable, Callable]:
    """One (B, max_len) forward, right-padded with id 0, writing a StaticKVCache (decoding.generate's prefill).

    Causal attention keeps pads (after each prompt's end) out of its real tokens; logits are
    taken at each prompt's own last position.
    """
    model, dev = run.model, run.device
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, width, dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p, device=dev)
    last = [len(p) - 1 for p in prompts]
    cols = sorted(set(last))
    out_index = torch.tensor(cols, device=dev)
    rows, pick = torch.arange(B, device=dev), torch.tensor([cols.index(i) for i in last], device=dev)
    pos = torch.arange(width, device=dev)
    model.setup_caches(B, width)

    def fn():
        return model(ids, pos, out_index)[rows, pick]  # (B, K, V) -> (B, V)

    return fn, model.remove_caches


def single_prefill(run: Run, prompts: list[list[int]]) -> tuple[Callable, Callable]:
    """The prompts one at a time: B forwards of (1, len) into a batch-1 StaticKVCache."""
    model, dev = run.model, run.device
    model.setup_caches(1, max(len(p) for p in prompts))
    calls = [(torch.tensor([p], device=dev), torch.arange(len(p), device=dev),
              torch.tensor([len(p) - 1], device=dev)) for p in prompts]

    def fn():
        return torch.cat([model(ids, pos, last)[:, 0] for ids, pos, last in calls])  # (B, V)

    return fn, model.remove_caches


def packed_prefill(run: Run, prompts: list[list[int]]) -> tuple[Callable, Callable]:
    """One flat (1, sum_len) forward over a PagedKVCache: what the engine's ModelRunner runs for a
    prefill-only step, with the metadata (positions, slots, block tables) built once, untimed."""
    from cache.paged_cache import PagedKVCache, build_metadata

    model, dev, bs = run.model, run.device, run.block_size
    need = [-(-len(p) // bs) for p in prompts]
    kv = PagedKVCache.allocate(run.config, 1 + sum(need), bs, run.dtype, dev)  # block 0: the null block
    ends = torch.tensor(need).cumsum(0).tolist()
    tables = [list(range(1 + end - n, 1 + end)) for n, end in zip(need, ends)]  # blocks 1.. in prompt order
    meta = build_metadata(tables, [0] * len(prompts), [len(p) for p in prompts], bs, dev)
    flat = torch.tensor([[t for p in prompts for t in p]], device=dev)
    rows = torch.tensor(meta.query_start_loc[1:], device=dev) - 1  # each prompt's last token
    meta.plan = model.setup_paged_caches(kv).plan(meta)

    def fn():
        kv.bind(meta)
        try:
            return model(flat, meta.positions, rows)[0]  # (B, V)
        finally:
            kv.bind(None)

    return fn, model.remove_caches


def engine_prefill(run: Run, prompts: list[list[int]]) -> tuple[Callable, Callable]:
    """scheduler.LLM.generate(prompts, max_tokens=1) under the static policy, prefix caching off (each
    call recomputes), budget and blocks for every prompt in one step. fn() returns (tokens, steps)."""
    from scheduler import LLM, SamplingParams

    bs = run.block_size
    lens = [len(p) for p in prompts]
    llm = LLM(run.model, policy="static", block_size=bs, num_blocks=1 + sum(-(-(n + 1) // bs) for n in lens),
              max_num_seqs=len(prompts), max_num_batched_tokens=max(sum(lens), max(lens) + 1),
              enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    scheduler = llm.engine.scheduler

    def fn():
        before = scheduler.num_steps
        outs = llm.generate(prompts, params)
        return [o.token_ids[0] for o in outs], scheduler.num_steps - before

    return fn, llm.engine.runner.close


OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def measure(run: Run, path: Callable, prompts: list[list[int]], what: str, engine: bool = False) -> dict[str, Any]:
    """Build the path, check its output against the reference, then time it. A row fragment:
    status ("ok", "WRONG: ...", "FAILED: out of memory") and, when ok, p10/p50/p90 ms."""
    want = reference_logits(run, prompts)
    try:
        fn, teardown = path(run, prompts)
    except OOM:
        run.model.remove_caches()
        return {"status": "FAILED: out of memory"}
    try:
        with torch.inference_mode():
            try:
                out = fn()
                if engine:
                    tokens, steps = out
                    if steps != 1:
                        raise AssertionError(f"{what}: the engine took {steps} steps, expected the whole batch in 1")
                    check_near_ties(want, tokens, run.dtype, f"{what} (position = prompt)")
                    err = None
                else:
                    err = check_logits(out, want, run.rtol, what)
            except AssertionError as e:
                return {"status": f"WRONG: {e}"}
            t = common.time_fn(fn, run.device, warmup=run.warmup, iters=run.iters)
    except OOM:
        return {"status": "FAILED: out of memory"}
    finally:
        teardown()
    return {"status": "ok", "rel_err": err, **{f"{q}_ms": t[q] / 1e3 for q in ("p10", "p50", "p90")}}


def prefill_flops(run: Run, lens: list[int]) -> float:
    """Useful FLOPs of prefilling prompts of `lens` (module docstring): Linear + LM head + causal attention."""
    c = run.config
    linear = 2 * run.linear_params * sum(lens)
    head = 2 * c.dim * c.vocab_size * len(lens)
    attention = sum(4 * c.n_layers * c.n_heads * c.head_dim * n * (n + 1) // 2 for n in lens)
    return float(linear + head + attention)


def _throughput(run: Run, row: dict[str, Any], lens: list[int], ceiling: float) -> dict[str, Any]:
    if row.get("status") == "ok":
        s = row["p50_ms"] / 1e3
        row["tokens_per_s"] = sum(lens) / s
        row["tflops"] = prefill_flops(run, lens) / s / 1e12
        row["pct_of_ceiling"] = 100 * row["tflops"] / ceiling
    return row


# ----------------------------------------------------------------------------
# The experiments
# ----------------------------------------------------------------------------


def cached_step_logits(model: nn.Module, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(B, N, V): the cached loop's logits (prefill, then one token a step) teacher-forced on `tokens`."""
    B, total = tokens.shape
    dev = tokens.device
    model.setup_caches(B, total)
    try:
        out = [model(tokens[:, :prompt_len], torch.arange(prompt_len, device=dev))[:, -1]]
        for cur in range(prompt_len + 1, total):
            out.append(model(tokens[:, cur - 1:cur], torch.tensor([cur - 1], device=dev))[:, -1])
    finally:
        model.remove_caches()
    return torch.stack(out, dim=1)


def check_generation(run: Run, prompt: torch.Tensor, n_new: int) -> tuple[float, bool]:
    """Cached vs recomputed generation: step logits within rtol (teacher forced on the recomputed
    tokens), and in fp32 identical greedy tokens. Returns (largest relative error, tokens identical)."""
    from decoding.generate import generate

    P = prompt.shape[1]
    what = f"kv_cache P={P} N={n_new}"
    ref = generate(run.model, prompt, n_new, use_cache=False)
    got = generate(run.model, prompt, n_new, use_cache=True)
    with torch.inference_mode():
        cached = cached_step_logits(run.model, ref.tokens, P)
        full = run.model(ref.tokens[:, :-1], output_index=torch.arange(P - 1, P + n_new - 1, device=run.device))
    err = check_logits(cached, full, run.rtol, what=f"{what}: cached step logits vs recompute")
    same = torch.equal(ref.tokens, got.tokens)
    if not same and run.dtype == torch.float32:
        i = int((ref.tokens[0, P:] != got.tokens[0, P:]).nonzero()[0])
        raise AssertionError(f"{what}: fp32 greedy tokens differ from step {i} (no cache "
                             f"{ref.tokens[0, P + i].item()}, cache {got.tokens[0, P + i].item()})")
    return err, same


def exp_kv_cache(run: Run, configs: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """Rows of (sweep, P, N) configurations, a no_cache and a kv_cache row each."""
    from decoding.generate import generate

    rows: list[dict[str, Any]] = []
    done: dict[tuple[int, int], list[dict[str, Any]]] = {}  # (P, N) measured in the other sweep already
    for sweep, P, N in configs:
        if (P, N) in done:
            rows += [{**r, "sweep": sweep} for r in done[(P, N)]]
            continue
        prompt = torch.tensor(make_prompts(run, [P], salt=P), device=run.device)
        base = {"experiment": "kv_cache", "sweep": sweep, "config": f"P{P} N{N}", "batch": 1,
                "prompt_len": P, "new_tokens": N}
        try:
            err, same = check_generation(run, prompt, N)
        except AssertionError as e:
            done[(P, N)] = [{**base, "variant": v, "status": f"WRONG: {e}"} for v in ("no_cache", "kv_cache")]
            rows += done[(P, N)]
            continue
        except OOM:
            done[(P, N)] = [{**base, "variant": v, "status": "FAILED: out of memory"} for v in ("no_cache", "kv_cache")]
            rows += done[(P, N)]
            continue
        pair = []
        for variant, use_cache in (("no_cache", False), ("kv_cache", True)):
            t = common.time_fn(lambda u=use_cache: generate(run.model, prompt, N, use_cache=u), run.device,
                               warmup=1, iters=run.gen_iters)
            pair.append({**base, "variant": variant, "status": "ok", "rel_err": err, "tokens_identical": same,
                         **{f"{q}_ms": t[q] / 1e3 for q in ("p10", "p50", "p90")},
                         "ms_per_token": t["p50"] / 1e3 / N, "tokens_per_s": N / (t["p50"] * 1e-6)})
        pair[1]["speedup"] = pair[0]["p50_ms"] / pair[1]["p50_ms"]
        done[(P, N)] = pair
        rows += pair
    return rows


def exp_mixed(run: Run, batch: int, length: int, ceiling: float) -> list[dict[str, Any]]:
    rows = []
    paths = {"padded": padded_prefill, "packed": packed_prefill, "engine": engine_prefill}
    for shape, lens in (("uniform", [length] * batch), ("mixed", spread_lengths(batch, length))):
        prompts = make_prompts(run, lens, salt=1)
        width = max(lens)
        for name, path in paths.items():
            computed = batch * width if name == "padded" else sum(lens)
            row = {"experiment": "mixed", "config": f"{shape} B{batch} L{length}", "variant": name, "shape": shape,
                   "batch": batch, "prompt_len": length, "lens": " ".join(map(str, lens)),
                   "spread": width / length, "tokens": sum(lens), "computed_tokens": computed,
                   "wasted_tokens": computed - sum(lens), "wasted_pct": 100 * (computed - sum(lens)) / computed}
            row.update(measure(run, path, prompts, f"mixed {shape} {name}", engine=name == "engine"))
            rows.append(_throughput(run, row, lens, ceiling))
    return rows


def exp_batching(run: Run, batch: int, length: int, ceiling: float) -> list[dict[str, Any]]:
    lens = [length] * batch
    prompts = make_prompts(run, lens, salt=2)
    rows = []
    for name, path in (("single", single_prefill), ("batched", padded_prefill)):
        row = {"experiment": "batching", "config": f"B{batch} L{length}", "variant": name, "batch": batch,
               "prompt_len": length, "tokens": sum(lens), "prompts_per_forward": 1 if name == "single" else batch}
        row.update(measure(run, path, prompts, f"batching {name} B={batch} L={length}"))
        rows.append(_throughput(run, row, lens, ceiling))
    if all(r["status"] == "ok" for r in rows):
        rows[1]["speedup"] = rows[0]["p50_ms"] / rows[1]["p50_ms"]
    return rows


def exp_batch_size(run: Run, batch_sizes: list[int], length: int, ceiling: float) -> list[dict[str, Any]]:
    pool = make_prompts(run, [length] * max(batch_sizes), salt=3)
    rows = []
    for B in batch_sizes:
        row = {"experiment": "batch_size", "config": f"L{length} B{B}", "variant": "batched", "batch": B,
               "prompt_len": length, "tokens": B * length}
        row.update(measure(run, padded_prefill, pool[:B], f"batch_size B={B} L={length}"))
        rows.append(_throughput(run, row, [length] * B, ceiling))
    return rows


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------

TABLES = {
    "kv_cache": [("sweep", "sweep"), ("prompt_len", "P"), ("new_tokens", "N"), ("variant", "variant"),
                 ("status", "status"), ("p50_ms", "p50 ms"), ("ms_per_token", "ms/token"),
                 ("tokens_per_s", "tok/s"), ("speedup", "vs no cache"), ("tokens_identical", "same tokens"),
                 ("rel_err", "rel err")],
    "mixed": [("shape", "shape"), ("variant", "path"), ("status", "status"), ("tokens", "tokens"),
              ("computed_tokens", "computed"), ("wasted_tokens", "wasted"), ("wasted_pct", "wasted %"),
              ("p50_ms", "p50 ms"), ("p10_ms", "p10 ms"), ("p90_ms", "p90 ms"), ("tokens_per_s", "tok/s"),
              ("tflops", "TFLOP/s"), ("rel_err", "rel err")],
    "batching": [("variant", "variant"), ("batch", "B"), ("prompt_len", "L"), ("status", "status"),
                 ("p50_ms", "total p50 ms"), ("p10_ms", "p10 ms"), ("p90_ms", "p90 ms"), ("tokens_per_s", "tok/s"),
                 ("tflops", "TFLOP/s"), ("speedup", "vs single"), ("rel_err", "rel err")],
    "batch_size": [("batch", "B"), ("prompt_len", "L"), ("tokens", "tokens"), ("status", "status"),
                   ("p50_ms", "p50 ms"), ("p10_ms", "p10 ms"), ("p90_ms", "p90 ms"),
                   ("tokens_per_s", "tok/s"), ("tflops", "TFLOP/s"), ("pct_of_ceiling", "% ceiling"),
                   ("rel_err", "rel err")],
}
TITLES = {
    "kv_cache": "kv_cache: N greedy tokens after a P-token prompt, batch 1, recompute vs static KV cache",
    "mixed": "mixed: B prompts, same total tokens, uniform vs mixed lengths (L/4..7L/4)",
    "batching": "batching: B prompts one at a time vs one batch",
    "batch_size": "batch_size: one (B, L) prefill",
}


def summary_records(rows: list[dict[str, Any]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of every ok row: prefill/<experiment>/<config>/<variant> <metric>."""
    out = []

    def rec(name, value, unit):
        if value is not None:
            out.append({"name": f"prefill/{name}", "value": value, "unit": unit, **extra})

    for r in rows:
        if r.get("status") != "ok":
            continue
        key = f"{r['experiment']}/{r['config']}/{r['variant']}"
        rec(f"{key} p50 ms", r["p50_ms"], "ms")
        rec(f"{key} tokens per s", r.get("tokens_per_s"), "tokens/s")
        if r["experiment"] == "kv_cache":
            rec(f"{key} ms per token", r["ms_per_token"], "ms")
        else:
            rec(f"{key} TFLOP/s", r.get("tflops"), "TFLOP/s")
        if r["experiment"] == "batch_size":
            rec(f"{key} % of ceiling", r.get("pct_of_ceiling"), "%")
        if r["experiment"] == "mixed" and r["variant"] == "padded":
            rec(f"{key} wasted tokens", r["wasted_tokens"], "tokens")
        rec(f"{key} speedup", r.get("speedup"), "x")
    return out


def panels(rows: list[dict[str, Any]], ceiling: float, cpu: bool) -> list[dict[str, Any]]:
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    for sweep, x_key, xlabel in (("new_tokens", "new_tokens", "new tokens N"), ("prompt_len", "prompt_len",
                                                                               "prompt length P")):
        rs = [r for r in ok if r["experiment"] == "kv_cache" and r["sweep"] == sweep]
        if rs:
            fixed = "P" if sweep == "new_tokens" else "N"
            out.append({"title": f"kv_cache: time per generated token vs {xlabel} ({fixed} fixed)",
                        "xlabel": xlabel, "ylabel": "ms / token (p50)", "logx": True, "series": {
                            v: ([r[x_key] for r in rs if r["variant"] == v], [r["ms_per_token"] for r in rs
                                                                              if r["variant"] == v])
                            for v in ("no_cache", "kv_cache")}})
    rs = [r for r in ok if r["experiment"] == "mixed"]
    if rs:
        out.append({"title": "mixed: same total tokens, x = longest / mean length (1 = uniform)",
                    "xlabel": "length spread (max / mean)", "ylabel": "useful tokens/s", "series": {
                        p: ([r["spread"] for r in rs if r["variant"] == p],
                            [r["tokens_per_s"] for r in rs if r["variant"] == p]) for p in PATHS}})
    rs = [r for r in ok if r["experiment"] == "batching"]
    if rs:
        out.append({"title": f"batching: {rs[0]['batch']} prompts of {rs[0]['prompt_len']}, one at a time vs one batch",
                    "xlabel": "prompts per forward", "ylabel": "tokens/s", "logx": True,
                    "series": {"prefill": ([r["prompts_per_forward"] for r in rs], [r["tokens_per_s"] for r in rs])}})
    rs = [r for r in ok if r["experiment"] == "batch_size"]
    if rs:
        L = rs[0]["prompt_len"]
        xs = [r["batch"] for r in rs]
        out.append({"title": f"batch_size: prefill tokens/s vs batch (L={L})", "xlabel": "batch B",
                    "ylabel": "tokens/s", "logx": True, "series": {"tokens/s": (xs, [r["tokens_per_s"] for r in rs])}})
        label = "CPU run: 512^3 matmul (not a roofline)" if cpu else "measured matmul ceiling"
        out.append({"title": f"batch_size: TFLOP/s vs batch (L={L})", "xlabel": "batch B", "ylabel": "TFLOP/s",
                    "logx": True, "series": {"useful TFLOP/s": (xs, [r["tflops"] for r in rs])},
                    "hlines": {f"{label} {ceiling:.3g}": ceiling}})
    return out


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def _int_list(opts: Options, name: str, default) -> list[int]:
    try:
        values = common.int_list(getattr(opts, name), default)
    except ValueError:
        raise PrefillError(f"--{name} must be a comma list of integers, got {getattr(opts, name)}") from None
    if not values or min(values) < 1:
        raise PrefillError(f"--{name} must be positive integers, got {values}")
    return values


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise PrefillError(f"--{name} must be >= 1, got {value}")
    return value


def main(argv: list[str]) -> None:
    """The binary: the flags, read once into Options, then run."""
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> None:
    """The whole benchmark: check every input (PrefillError naming the flag, before anything runs),
    check and time every path, write the results, then exit 1 if any was WRONG or FAILED."""
    try:
        device = common.resolve_device(opts.device)
    except ValueError as e:  # model.device.UsageError: names the flag
        raise PrefillError(str(e)) from None
    cpu = not common.is_cuda(device)
    d = CPU_DEFAULTS if cpu else GPU_DEFAULTS

    def flag(name: str):  # the flag's value, or this device's default when it was not given
        value = getattr(opts, name)
        return d[name] if value is None else value

    experiments = list(opts.experiments or EXPERIMENTS)
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise PrefillError(f"--experiments: unknown {', '.join(unknown)}; expected some of {', '.join(EXPERIMENTS)}")
    try:
        dtype = common.parse_dtype(opts.dtype or d["dtype"])
    except ValueError as e:  # names the flag
        raise PrefillError(str(e)) from None
    if dtype not in TOL:
        raise PrefillError(f"--dtype {opts.dtype}: no check tolerance for it; use bf16, fp16 or fp32")
    length = _positive("prompt_len", flag("prompt_len"))
    batch = _positive("batch", flag("batch"))
    batch_sizes = _int_list(opts, "batch_sizes", d["batch_sizes"])
    gen_p = _positive("gen_prompt_len", flag("gen_prompt_len"))
    gen_n = _positive("gen_new_tokens", flag("gen_new_tokens"))
    new_tokens = _int_list(opts, "new_tokens", d["new_tokens"])
    gen_prompt_lens = _int_list(opts, "gen_prompt_lens", d["gen_prompt_lens"])
    warmup = flag("warmup")
    iters = _positive("iters", flag("iters"))
    gen_iters = _positive("gen_iters", flag("gen_iters"))
    block_size = _positive("block_size", opts.block_size)
    rtol = opts.rtol if opts.rtol is not None else TOL[dtype]
    if warmup < 0 or not rtol > 0:
        raise PrefillError(f"--warmup must be >= 0 and --rtol > 0, got {warmup} and {rtol}")

    preset = flag("preset")
    context = model_context(preset)
    kv_configs = list(dict.fromkeys([("new_tokens", gen_p, n) for n in new_tokens]
                                    + [("prompt_len", p, gen_n) for p in gen_prompt_lens]))
    # Every length is checked against the context before anything runs.
    if "kv_cache" in experiments:
        for _, P, N in kv_configs:
            if P + N > context:
                raise PrefillError(f"kv_cache: prompt {P} + new tokens {N} = {P + N} exceeds the model context of "
                                   f"{context} tokens (--gen_prompt_len(s), --new_tokens, --gen_new_tokens)")
    longest = max(spread_lengths(batch, length))
    if "mixed" in experiments and longest >= context:
        raise PrefillError(f"mixed: --prompt_len {length} gives a longest prompt of {longest} tokens (7L/4), "
                           f"which must be below the model context of {context} tokens")
    if ("batching" in experiments or "batch_size" in experiments) and length > context:
        raise PrefillError(f"--prompt_len {length} exceeds the model context of {context} tokens")

    bench = make_run(preset, opts.n_layers, device, dtype, rtol, warmup, iters, gen_iters, opts.seed, block_size)
    model, label = bench.model, bench.label

    dev_name = common.device_name(device)
    ceiling = common.measure_matmul_tflops(device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    ceiling_text = (f"CPU run: a 512^3 {common.dtype_name(dtype)} matmul does {ceiling:.3g} TFLOP/s (a reference, "
                    f"not a roofline)" if cpu else
                    f"ceiling: {ceiling:.1f} TFLOP/s (measured 8192^3 {common.dtype_name(dtype)} matmul)")
    print(f"prefill on {dev_name}, {common.today()}, torch {torch.__version__}; {label}, {n_params / 1e6:.1f} M "
          f"params, {common.dtype_name(dtype)}, context {context}; check rtol {rtol:g}\n{ceiling_text}", flush=True)

    rows: list[dict[str, Any]] = []
    for exp in experiments:
        if exp == "kv_cache":
            got = exp_kv_cache(bench, kv_configs)
        elif exp == "mixed":
            got = exp_mixed(bench, batch, length, ceiling)
        elif exp == "batching":
            got = exp_batching(bench, batch, length, ceiling)
        else:
            got = exp_batch_size(bench, batch_sizes, length, ceiling)
        common.print_table(got, TABLES[exp], title="\n" + TITLES[exp])
        rows += got

    out_dir = common.results_dir("prefill", device)
    extra = {"model": label, "dtype": common.dtype_name(dtype)}
    summary = [{"name": "prefill/ceiling matmul TFLOP/s", "value": ceiling, "unit": "TFLOP/s",
                "note": "CPU run: 512^3 matmul, not a roofline" if cpu else "8192^3 matmul", **extra}]
    summary += summary_records(rows, extra)
    paths = common.write_results(out_dir, "prefill", rows, summary, command=common.command_line("prefill"),
                                 device=dev_name)
    if opts.plot:
        title = f"bench.prefill: {label} {common.dtype_name(dtype)} on {dev_name}, {common.today()}"
        paths["png"] = common.plot_panels(out_dir / "prefill.png", panels(rows, ceiling, cpu), title=title)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for r in rows:
        if common.is_failure(r["status"]):
            print(f"{r['experiment']} {r['config']} {r['variant']}: {r['status']}", file=sys.stderr)
    common.exit_on_failures("bench.prefill", [f"{r['experiment']} {r['config']} {r['variant']}" for r in rows
                                              if common.is_failure(r["status"])])


def _main(argv: list[str]) -> None:
    """main, with a PrefillError printed as one `error: ...` line and exit 2."""
    try:
        main(argv)
    except PrefillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(_main)
