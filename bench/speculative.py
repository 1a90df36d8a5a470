"""Speculative decoding on the Spec-Bench prompts: what each strategy buys per task, against plain
decoding in the same run, and (on a GPU) a cost model projecting it onto the Llama-3-8B shape.

    python3 -m bench.speculative                      # CPU: lab-small + lab-draft, 5 prompts per task
    python3 -m bench.speculative --per_task 80        # every prompt
    python3 -m bench.speculative --cost_model         # GPU: also the 8B-shape cost model (needs CUDA)
    python3 -m bench.speculative --engine_seqs 8      # also the batching engine, plain vs each strategy
    bazel run //bench:speculative

Per prompt (the first turn, its last --max_prompt_tokens tokens; the lab models' context is 512),
plain greedy decoding of --max_new_tokens tokens (no early stop) runs first, then each strategy
(decoding.speculative: draft model with k proposals, prompt-lookup n-gram, Medusa heads on the target,
--heads_checkpoint, an EAGLE-style one-layer draft head, --eagle_checkpoint) over the same caches.
Each strategy's tokens must equal plain greedy's (lossless); where they part, the strategy's token must
be a near tie of the target's logits there (within parity.ties' band for the dtype: 1e-4 of max|logit|
in fp32, where a k+1-row verify and a 1-row step differ only in summation order; counted in near_ties),
else the strategy is WRONG and the run exits 1 after writing its results. Per task and strategy:
  acceptance   accepted proposals / proposals verified
  tau          mean accepted length: tokens emitted per target verify forward (accepted + 1)
  tgt_fwd/tok  target forwards (prefill included) per generated token; plain decoding's is 1
  tok/s        tokens after the first over the time after the first (the decode phase; a strategy's
               includes its draft's prefill, paid on its first cycle)
  speedup      tok/s over plain decoding's tok/s on the same prompts, interleaved prompt by prompt
  e2e_speedup  the same with the target's prompt prefill included on both sides
  ceiling      tau: the speedup if proposing were free and a (k+1)-token verify cost one step
The models are tiny: on a CPU a lab-small step is ~10 ms and a lab-draft step ~3 ms, mostly
Python and small matmuls, so the draft costs ~1/4 of the target instead of the ~1/10 to 1/20
a real draft/target pair has. On a GPU both are launch-bound (the cost model says by how much).

--engine_seqs N: the same prompts through the batching engine (LLM, paged cache, up to N requests at
once), plain and with each strategy per k (scheduler/speculative.py; the draft proposes greedily):
new tokens, engine steps, acceptance, step_ratio (plain steps / steps: the speedup if a speculative
step cost a plain one), tok/s end to end (fastest of --engine_rounds interleaved rounds) and speedup
over the plain engine; outputs checked against the plain engine's as above.

--cost_model (GPU only): random bf16 weights at the Llama-3-8B shape and a Llama-3.2-1B-shape draft
(dim 2048, 16 layers, tied embeddings), CUDA graphs, --cost_context tokens in the cache. Times a
decode step (t_1), a verify of w = k + 1 tokens (t_w) and a draft step (t_d); checks each verify's
logits against w single steps first. Then for each measured acceptance profile prints
  projected 8B speedup = tau * t_1 / (t_{k+1} + d * t_d + h)
with tau and d (draft forwards per verify) measured above on the lab models and h the host time of
one n-gram lookup (0 for the draft) or of the heads' k proposals (random Medusa heads at the 8B shape:
k residual blocks + the 8B lm_head over the 128K vocabulary + argmax, eager) or of an EAGLE head's k
draft steps (a random one-layer head at the 8B shape over a cache of --cost_context tokens, each step
fc + one decoder layer + the 8B lm_head + argmax, eager). A projection, not a
measurement: it assumes the 8B target and 1B draft (or 8B heads) agree as often as lab-small and
lab-draft (or lab-small's heads) do.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from absl import app

from bench import common

_define = common.define_flag
_define("string", "checkpoint", None, "Target model (default lab-small).")
_define("string", "draft_checkpoint", "lab-draft", "Draft model for the draft strategy (same tokenizer).")
_define("list", "strategies", ["draft", "ngram"], "Strategies: draft, ngram, heads, eagle (default draft,ngram).")
_define("string", "heads_checkpoint", "lab-small-medusa", "Medusa heads of the target for the heads strategy "
        "(default the shipped lab-small-medusa; decoding/heads.py).")
_define("string", "eagle_checkpoint", "lab-small-eagle", "EAGLE draft head of the target for the eagle strategy "
        "(default the shipped lab-small-eagle; decoding/eagle.py).")
_define("list", "ks", ["2", "4"], "num_speculative_tokens values to run for each strategy (default 2,4).")
_define("float", "draft_min_prob", 0.0, "Stop drafting once the draft's probability of its proposal is below "
        "this (default 0: always k).")
_define("integer", "ngram_min", 1, "Shortest suffix the n-gram strategy matches (default 1; 2-3 propose less often "
        "and better, which pays where a wider verify costs more than a step, as on a CPU).")
_define("integer", "per_task", None, "Prompts per task (default 5 on a CPU, 80 = all on a GPU).")
_define("integer", "max_new_tokens", 64, "Tokens generated per prompt (default 64).")
_define("integer", "max_prompt_tokens", 384, "A prompt keeps its last this many tokens (default 384: 384 + 64 "
        "new + 33 verify positions fit the 512-token context).")
_define("string", "device", "auto", "cuda, cpu or auto.")
_define("string", "dtype", "fp32", "Default fp32: greedy equality is the lossless check, exact in fp32.")
_define("boolean", "cost_model", False, "Also run the 8B-shape GPU cost model (needs CUDA).")
_define("integer", "cost_context", 1024, "Tokens in the KV cache when the cost model times its steps (default 1024).")
_define("integer", "engine_rounds", 3, "Engine runs per config, interleaved; the fastest counts (default 3).")
_define("integer", "engine_seqs", 0, "Also run the same prompts through the batching engine (LLM), plain and with "
        "each strategy and --ks, at most this many requests at once (default 0: skip).")


@dataclass(frozen=True)
class Options:
    checkpoint: str | None = None
    draft_checkpoint: str = "lab-draft"
    heads_checkpoint: str = "lab-small-medusa"
    eagle_checkpoint: str = "lab-small-eagle"
    strategies: tuple = ("draft", "ngram")
    ks: tuple = ("2", "4")
    draft_min_prob: float = 0.0
    ngram_min: int = 1
    per_task: int | None = None
    max_new_tokens: int = 64
    max_prompt_tokens: int = 384
    device: str = "auto"
    dtype: str = "fp32"
    cost_model: bool = False
    cost_context: int = 1024
    engine_seqs: int = 0
    engine_rounds: int = 3


def strategies(opts: Options) -> list:
    """SpeculativeConfig per (strategy, k), or absl's UsageError naming the flag."""
    from decoding.speculative import METHODS, SpeculativeConfig

    out = []
    for s in opts.strategies:
        if s not in METHODS:
            raise app.UsageError(f"--strategies: {s!r} is not one of {', '.join(METHODS)}")
        for k in common.int_list(list(opts.ks), ()):
            try:
                out.append(SpeculativeConfig(s, k, draft_min_prob=opts.draft_min_prob if s == "draft" else 0.0,
                                             ngram_min=opts.ngram_min, ngram_max=max(4, opts.ngram_min)))
            except ValueError as e:
                raise app.UsageError(f"--ks/--draft_min_prob/--ngram_min: {e}") from None
    return out


def label(cfg) -> str:
    return f"{cfg.method}-k{cfg.num_speculative_tokens}"


def profiles(opts: Options, device: str, dtype: torch.dtype) -> tuple[list[dict], list[str]]:
    """Run plain and every strategy on each task's prompts; (rows per task and strategy, failures)."""
    import model
    from data.spec_bench import TASKS, by_task, prompt_ids
    from decoding.speculative import SpeculativeDecoder
    from parity.ties import TIE_BAND
    from model.loader import checkpoint_dir
    from model.tokenizer import load_tokenizer

    cfgs = strategies(opts)
    if opts.max_prompt_tokens + opts.max_new_tokens > 512 - 33:
        raise app.UsageError("--max_prompt_tokens + --max_new_tokens must leave 33 of the 512 positions free")
    checkpoint = opts.checkpoint or "lab-small"
    target = model.load(checkpoint, dtype=dtype, device=device)
    draft = model.load(opts.draft_checkpoint, dtype=dtype, device=device) if any(
        c.method == "draft" for c in cfgs) else None
    heads = load_heads_flag(opts, target, cfgs)
    eagle = load_eagle_flag(opts, target, cfgs)
    tok = load_tokenizer(checkpoint_dir(checkpoint))
    cuda = common.is_cuda(device)
    dec = SpeculativeDecoder(target, draft, cuda_graph=cuda, fuse=cuda, heads=heads, eagle=eagle)
    per_task = opts.per_task if opts.per_task is not None else (80 if cuda else 5)
    groups = by_task(per_task)
    warm = prompt_ids(tok, groups[TASKS[0]][0], 32)
    dec.plain(warm, 8)
    for cfg in cfgs:  # capture/warm every step width before anything is timed
        dec.warm(cfg)
        dec.generate(warm, 8, cfg)
    rows, failures = [], []
    totals = {label(c): _Acc() for c in cfgs}
    plain_all = _Acc()
    for task, questions in groups.items():
        acc = {label(c): _Acc() for c in cfgs}
        plain = _Acc()
        for q in questions:
            ids = prompt_ids(tok, q, opts.max_prompt_tokens)
            ref = dec.plain(ids, opts.max_new_tokens)
            plain.add_plain(ref)
            plain_all.add_plain(ref)
            for cfg in cfgs:
                out = dec.generate(ids, opts.max_new_tokens, cfg)
                a = acc[label(cfg)]
                a.add(out)
                totals[label(cfg)].add(out)
                if out.new_ids != ref.new_ids and a.status == "ok":
                    gap, at = divergence_gap(dec.target.model, ids, out.new_ids[0], ref.new_ids[0])
                    if gap <= TIE_BAND[dtype]:  # both tokens within the dtype's tie band: a near tie, not a bug
                        a.near_ties += 1
                    else:
                        a.status = (f"WRONG: question {q.question_id} differs from plain greedy at new token {at} "
                                    f"({gap:.3g} of max|logit| below the target's argmax)")
        for cfg in cfgs:
            rows.append(acc[label(cfg)].row(task, label(cfg), plain))
            t = totals[label(cfg)]
            t.near_ties += acc[label(cfg)].near_ties
            if t.status == "ok":
                t.status = acc[label(cfg)].status
    for cfg in cfgs:
        rows.append(totals[label(cfg)].row("all", label(cfg), plain_all))
    failures += [f"{r['task']}/{r['strategy']}" for r in rows if common.is_failure(r["status"])]
    dec.close()
    return rows, failures


def load_heads_flag(opts: Options, target, cfgs: list):
    """The --heads_checkpoint heads when a heads strategy runs (else None); UsageError naming the flag."""
    if not any(c.method == "heads" for c in cfgs):
        return None
    from decoding.heads import HeadsError, load_heads

    try:
        heads = load_heads(opts.heads_checkpoint, target)
    except HeadsError as e:
        raise app.UsageError(f"--heads_checkpoint: {e}") from None
    k = max(c.num_speculative_tokens for c in cfgs if c.method == "heads")
    if k > heads.num_heads:
        raise app.UsageError(f"--ks: k={k} exceeds the {heads.num_heads} heads of --heads_checkpoint")
    return heads


def load_eagle_flag(opts: Options, target, cfgs: list):
    """The --eagle_checkpoint head when an eagle strategy runs (else None); UsageError naming the flag."""
    if not any(c.method == "eagle" for c in cfgs):
        return None
    from decoding.eagle import EagleError, load_eagle

    try:
        return load_eagle(opts.eagle_checkpoint, target)
    except EagleError as e:
        raise app.UsageError(f"--eagle_checkpoint: {e}") from None


def divergence_gap(target, prompt: list[int], got: list[int], want: list[int]) -> tuple[float, int]:
    """Where got first differs from want (greedy ids after prompt), how far got's token sits below the
    target's maximum logit there, over max|logit| (parity.ties' measure), and that index."""
    at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
    if at >= min(len(got), len(want)):
        return float("inf"), at  # one is a prefix of the other: a length bug, never a tie
    ids = torch.tensor(prompt + got[:at], device=target.model.embed_tokens.weight.device)
    with torch.inference_mode():  # over the installed static cache: the next generation prefills anew
        row = target(ids[None], torch.arange(len(ids), device=ids.device))[0, -1].float()
    return float((row.max() - row[got[at]]) / row.abs().max()), at


class _Acc:
    """Sums over prompts of one task and strategy."""

    def __init__(self):
        self.near_ties = 0  # prompts whose output parted from plain greedy's at a near tie (parity.ties)
        self.prompts = self.tokens = self.cycles = self.proposed = self.accepted = 0
        self.target_fwd = self.draft_fwd = 0
        self.seconds = self.decode_s = 0.0
        self.status = "ok"

    def add_plain(self, res) -> None:
        self.prompts += 1
        self.tokens += res.n_new
        self.seconds += res.prefill_s + res.decode_s
        self.decode_s += res.decode_s

    def add(self, res) -> None:
        self.add_plain(res)
        s = res.stats
        self.cycles += s.cycles
        self.proposed += s.proposed
        self.accepted += s.accepted
        self.target_fwd += s.target_forwards
        self.draft_fwd += s.draft_forwards

    def row(self, task: str, strategy: str, plain: "_Acc") -> dict[str, Any]:
        tok_s = (self.tokens - self.prompts) / self.decode_s  # after each prompt's first token
        plain_tok_s = (plain.tokens - plain.prompts) / plain.decode_s
        tau = (self.accepted + self.cycles) / self.cycles
        return {"task": task, "strategy": strategy, "prompts": self.prompts, "new_tokens": self.tokens,
                "acceptance": self.accepted / self.proposed if self.proposed else 0.0, "tau": tau,
                "tgt_fwd_per_tok": self.target_fwd / self.tokens, "draft_fwd_per_cycle": self.draft_fwd / self.cycles,
                "tok_s": tok_s, "plain_tok_s": plain_tok_s, "speedup": tok_s / plain_tok_s, "ceiling": tau,
                "e2e_speedup": (self.tokens / self.seconds) / (plain.tokens / plain.seconds),
                "near_ties": self.near_ties,
                "status": self.status}


def engine_rows(opts: Options, device: str, dtype: torch.dtype) -> tuple[list[dict], list[str]]:
    """The same prompts through LLM (batching engine, paged cache), plain and with each strategy and k
    (scheduler/speculative.py: n-gram, or the draft model's greedy proposals), at most --engine_seqs at
    once; greedy, no early stop. Every speculative output must equal the plain engine's, or part from it
    at a near tie (as above)."""
    import model
    from data.spec_bench import by_task, prompt_ids
    from decoding.speculative import SpeculativeConfig
    from model.loader import checkpoint_dir
    from model.tokenizer import load_tokenizer
    from parity.ties import TIE_BAND
    from scheduler import LLM, SamplingParams

    checkpoint = opts.checkpoint or "lab-small"
    target = model.load(checkpoint, dtype=dtype, device=device)
    tok = load_tokenizer(checkpoint_dir(checkpoint))
    per_task = opts.per_task if opts.per_task is not None else (80 if common.is_cuda(device) else 5)
    prompts = [prompt_ids(tok, q, opts.max_prompt_tokens) for qs in by_task(per_task).values() for q in qs]
    params = SamplingParams(max_tokens=opts.max_new_tokens, ignore_eos=True)
    from scheduler.speculative import ENGINE_METHODS

    cfgs = [c for c in strategies(opts) if c.method in ENGINE_METHODS]  # heads: batch 1 only so far
    draft = model.load(opts.draft_checkpoint, dtype=dtype, device=device) if any(
        c.method == "draft" for c in cfgs) else None
    rows, failures, plain = [], [], None
    best: dict[int, float] = {}  # config index -> fewest seconds over the rounds
    runs: dict[int, tuple] = {}  # config index -> (outputs, steps, acceptance) of its last round
    for _ in range(max(1, opts.engine_rounds)):  # rounds interleave the configs: load drifts hit all alike
        for i, spec in enumerate([None] + cfgs):
            # KV for engine_seqs full 512-token requests (+ the null block), on a GPU too (not 90% of it)
            llm = LLM(target, max_num_seqs=opts.engine_seqs, max_model_len=512, block_size=16,
                      num_blocks=opts.engine_seqs * 32 + 1, speculative=spec,
                      draft_model=draft if spec is not None and spec.method == "draft" else None)
            try:
                llm.generate(prompts[:2], SamplingParams(max_tokens=8))  # warm (kernels, allocator)
                eng = llm.engine
                steps0 = eng.scheduler.num_steps
                prop = eng.scheduler.proposer
                acc0 = (prop.accepted, prop.proposed) if prop is not None else (0, 0)
                common.sync(device)
                t0 = time.perf_counter()
                outs = [o.token_ids for o in llm.generate(prompts, params)]
                common.sync(device)
                best[i] = min(best.get(i, float("inf")), time.perf_counter() - t0)
                acc = (prop.accepted - acc0[0], prop.proposed - acc0[1]) if prop is not None else (0, 0)
                runs[i] = (outs, eng.scheduler.num_steps - steps0, acc[0] / acc[1] if acc[1] else 0.0)
            finally:
                llm.close()
    if common.is_cuda(device):
        torch.cuda.empty_cache()  # the cost model's 8B weights come next
    for i, spec in enumerate([None] + cfgs):
        outs, steps, acceptance = runs[i]
        tokens = sum(len(o) for o in outs)
        row = {"strategy": "plain" if spec is None else label(spec), "requests": len(prompts),
               "max_seqs": opts.engine_seqs, "new_tokens": tokens, "steps": steps, "acceptance": acceptance,
               "tok_s": tokens / best[i], "near_ties": 0, "status": "ok"}
        if plain is None:
            plain = (outs, row["tok_s"], steps)
        else:
            for ids, got, want in zip(prompts, outs, plain[0]):
                if got != want:
                    gap, at = divergence_gap(target, ids, got, want)
                    if gap <= TIE_BAND[dtype]:
                        row["near_ties"] += 1
                    elif row["status"] == "ok":
                        row["status"] = (f"WRONG: a request differs from the plain engine at new token {at} "
                                         f"({gap:.3g} of max|logit| below the target's argmax)")
        row["speedup"] = row["tok_s"] / plain[1]
        row["step_ratio"] = plain[2] / steps  # the speedup if a speculative step cost a plain one
        rows.append(row)
        if common.is_failure(row["status"]):
            failures.append(f"engine/{row['strategy']}")
    return rows, failures


def draft_1b_config():
    """The Llama-3.2-1B shape: Llama-3 vocabulary and RoPE, dim 2048, 16 layers, 32/8 heads, tied embeddings."""
    from model.config import ModelConfig

    return ModelConfig.from_name("llama3-8b").replace(dim=2048, n_layers=16, intermediate_size=8192,
                                                       tie_word_embeddings=True)


def cost_model(opts: Options, prof_rows: list[dict], device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
               shapes=None) -> tuple[list[dict], list[dict], list[str]]:
    """GPU: time t_1, t_{k+1} (8B shape) and t_d (1B shape) with CUDA graphs, check them, project.
    Returns (timing rows, projection rows, failures). shapes ((name, preset or config) for "8b" and
    "1b-draft") and a CPU device let a test run the same code on tiny shapes (eager, wall clock)."""
    from decoding.fast import FastGenerator
    from decoding.speculative import ngram_propose
    from model.random_weights import random_model
    from parity.ties import TIE_BAND

    cuda = common.is_cuda(device)
    shapes = shapes or (("8b", "llama3-8b"), ("1b-draft", draft_1b_config()))
    C = opts.cost_context
    widths = sorted({1} | {int(k) + 1 for k in opts.ks})
    timing, failures, t_us = [], [], {}
    for name, config in shapes:
        net = random_model(config, device=device, dtype=dtype, seed=0, max_seq_len=C + 64)
        gen = FastGenerator(net, 1, C + 64, cuda_graph=cuda, fuse=True)
        with torch.inference_mode():
            g = torch.Generator(device="cpu").manual_seed(0)
            ctx = torch.randint(0, net.config.vocab_size, (1, C + 33), generator=g).to(device)
            net(ctx[:, :C], torch.arange(C, device=device))  # fill the cache to C tokens
            singles = []
            for i in range(max(widths)):  # the reference: one graphed decode step per position
                singles.append(gen.step_for(1)(ctx[0, C + i:C + i + 1], C + i).float().clone())
            for w in (widths if name == "8b" else [1]):
                step = gen.step_for(1, w)
                status = "ok"
                if w > 1:
                    got = step(ctx[0, C:C + w], C)[0].float()  # (w, V)
                    want = torch.cat(singles[:w])
                    err = float((got - want).abs().max() / want.abs().max())
                    if not err <= TIE_BAND[dtype]:  # two bf16 computations: ~0.02 of max|logit| (parity.ties)
                        status = f"WRONG: verify logits differ from {w} decode steps by {err:.3g} of max|logit|"
                ids = ctx[0, C:C + w]
                timer = common.time_cuda if cuda else common.time_cpu
                t = timer(lambda: step(ids, C), warmup=5, iters=30, flush_l2=False) if status == "ok" else None
                if t is not None:
                    t_us[(name, w)] = t["p50"]
                timing.append({"model": name, "width": w, "context": C, "p50_us": t and t["p50"],
                               "p10_us": t and t["p10"], "p90_us": t and t["p90"],
                               "vs_decode": t and t["p50"] / t_us.get((name, 1), t["p50"]), "status": status})
                if common.is_failure(status):
                    failures.append(f"cost_model/{name}/w{w}")
            if name == "8b":
                t_us.update(time_heads(net, [int(k) for k in opts.ks], device, cuda))
                t_us.update(time_eagle(net, [int(k) for k in opts.ks], device, cuda, C))
        gen.close()
        del net, gen
        if cuda:
            torch.cuda.empty_cache()
    seq = torch.randint(0, 8192, (448,), generator=torch.Generator().manual_seed(0)).tolist()
    host = common.time_cpu(lambda: ngram_propose(seq, 4), warmup=5, iters=200)["p50"]
    proj = []
    if failures:
        return timing, proj, failures
    t1, td = t_us[("8b", 1)], t_us[("1b-draft", 1)]
    for r in prof_rows:
        if common.is_failure(r["status"]):
            continue
        method, k = r["strategy"].split("-k")
        tv = t_us[("8b", int(k) + 1)]
        d = r["draft_fwd_per_cycle"] if method == "draft" else 0.0
        h = (host if method == "ngram" else t_us[("heads", int(k))] if method == "heads"
             else t_us[("eagle", int(k))] if method == "eagle" else 0.0)
        speed = r["tau"] * t1 / (tv + d * td + h)
        # The decoder runs the EAGLE head eagerly (host above); its k steps replayed from a graph, if measured:
        hg = t_us.get(("eagle_graphed", int(k))) if method == "eagle" else None
        proj.append({"task": r["task"], "strategy": r["strategy"], "tau": r["tau"], "draft_fwd_per_cycle": d,
                     "t1_us": t1, "tverify_us": tv, "tdraft_us": td, "host_us": h,
                     "projected_8b_speedup": speed, "host_graphed_us": hg,
                     "projected_graphed_head": None if hg is None else r["tau"] * t1 / (tv + hg),
                     "kind": "projection"})
    return timing, proj, failures


def time_heads(net, ks: list[int], device: str, cuda: bool) -> dict:
    """{("heads", k): p50 us} of k Medusa heads' greedy proposals on net's shape (random heads, eager, the
    target's lm_head): what SpeculativeDecoder._heads_propose computes per cycle."""
    from decoding.heads import MedusaHeads

    w = net.lm_head.weight
    heads = MedusaHeads(max(ks), net.config.dim, net.config.vocab_size)
    torch.nn.init.normal_(heads.weight, std=0.02)
    heads = heads.to(device=w.device, dtype=w.dtype).eval()
    h = torch.randn(net.config.dim, device=w.device, dtype=w.dtype)
    timer = common.time_cuda if cuda else common.time_cpu
    out = {}
    with torch.inference_mode():
        for k in ks:
            out[("heads", k)] = timer(lambda: heads.logits(h, net.lm_head, k).argmax(-1), warmup=5, iters=30,
                                      flush_l2=False)["p50"]
    return out


def time_eagle(net, ks: list[int], device: str, cuda: bool, context: int) -> dict:
    """{("eagle", k): p50 us} of an EAGLE head's k greedy proposals on net's shape (a random head: fc +
    one decoder layer over its own KV cache of `context` tokens + the target's lm_head + argmax, eager):
    what SpeculativeDecoder._eagle_propose computes per cycle (its catch-up row is the first step)."""
    from decoding.eagle import EagleHead, head_config

    w = net.lm_head.weight
    head = EagleHead(head_config(net.config))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.02)
    head = head.to(device=w.device, dtype=w.dtype).eval()
    head.setup_cache(context + 64, w.device, w.dtype)
    h0 = torch.randn(1, 1, net.config.dim, device=w.device, dtype=w.dtype)
    timer = common.time_cuda if cuda else common.time_cpu
    out = {}

    positions = [torch.tensor([context + i], device=w.device) for i in range(max(ks))]  # made outside any capture

    def propose(k):
        f, tok = h0, torch.zeros(1, 1, dtype=torch.long, device=w.device)
        for i in range(k):
            f = head.features(net, f, tok, positions[i])
            tok = head.logits(net, f).argmax(-1)
        return tok

    with torch.inference_mode():
        for k in ks:
            out[("eagle", k)] = timer(lambda: propose(k), warmup=5, iters=30, flush_l2=False)["p50"]
            if cuda:  # the same k steps replayed from one CUDA graph: what a graphed draft loop would cost
                try:
                    out[("eagle_graphed", k)] = common.time_cuda_graph(lambda: propose(k), warmup=5, iters=30,
                                                                       flush_l2=False)["p50"]
                except RuntimeError as e:  # not capturable (yet): the column stays empty, the eager one stands
                    print(f"cost model: the EAGLE head's {k} steps could not be captured: {e}", file=sys.stderr)
    head.remove_cache()
    return out


def main(argv: list[str]) -> None:
    del argv
    run(common.options_from_flags(Options))


def run(opts: Options) -> dict:
    """Profiles, optionally the cost model; print the tables, write results, exit 1 on a WRONG row."""
    device, dtype = common.device_and_dtype(opts.device, opts.dtype)
    if opts.cost_model and not common.is_cuda(device):
        raise app.UsageError("--cost_model needs a CUDA device (--device cuda)")
    strategies(opts)  # flags checked before any model loads
    t0 = time.perf_counter()
    rows, failures = profiles(opts, device, dtype)
    cols = ["task", "strategy", "prompts", "acceptance", "tau", "tgt_fwd_per_tok", "draft_fwd_per_cycle", "tok_s",
            "plain_tok_s", "speedup", "e2e_speedup", "ceiling", "near_ties", "status"]
    dev = common.device_name(device)
    common.print_table(rows, cols, f"speculative decoding, greedy, batch 1, {opts.checkpoint or 'lab-small'} "
                       f"(+ {opts.draft_checkpoint}), {common.dtype_name(dtype)} on {dev} "
                       f"({time.perf_counter() - t0:.0f} s)")
    out = common.results_dir("speculative", device)
    summary = [{"name": f"speculative/{r['task']}/{r['strategy']}/{m}", "value": r[m], "unit": u}
               for r in rows if r["status"] == "ok"
               for m, u in (("speedup", "x"), ("acceptance", "fraction"), ("tau", "tokens/verify"),
                            ("tok_s", "tokens/s"))]
    paths = common.write_results(out, "speculative", rows, summary, device=dev)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    series = {}
    for r in rows:
        series.setdefault(r["strategy"], ([], []))
        series[r["strategy"]][0].append(tasks.index(r["task"]))
        series[r["strategy"]][1].append(r["speedup"] if r["status"] == "ok" else None)
    paths["png"] = common.plot_panels(out / "speculative.png", [{
        "title": "speedup over plain greedy per task (" + ", ".join(f"{i}={t}" for i, t in enumerate(tasks)) + ")",
        "xlabel": "task", "ylabel": "x", "series": series, "hlines": {"plain 1.0x": 1.0}}])
    if opts.engine_seqs:
        erows, e_fail = engine_rows(opts, device, dtype)
        failures += e_fail
        common.print_table(erows, ["strategy", "requests", "max_seqs", "new_tokens", "steps", "acceptance",
                                   "step_ratio", "tok_s", "speedup", "near_ties", "status"],
                           f"the batching engine, greedy, Spec-Bench prompts, {opts.checkpoint or 'lab-small'}, "
                           f"{common.dtype_name(dtype)} on {dev}: tok/s end to end (prefill included), fastest of "
                           f"{opts.engine_rounds} interleaved rounds")
        common.write_results(out, "speculative_engine", erows, [
            {"name": f"speculative_engine/{r['strategy']}/speedup", "value": r["speedup"], "unit": "x"}
            for r in erows if r["status"] == "ok"], device=dev)
    if opts.cost_model:
        timing, proj, cm_fail = cost_model(opts, rows)
        failures += cm_fail
        common.print_table(timing, ["model", "width", "context", "p10_us", "p50_us", "p90_us", "vs_decode", "status"],
                           f"cost model: graphed bf16 steps on {dev}, random weights (8b = Llama-3-8B shape, "
                           "1b-draft = Llama-3.2-1B shape)")
        common.print_table(proj, ["task", "strategy", "tau", "draft_fwd_per_cycle", "t1_us", "tverify_us",
                                  "tdraft_us", "host_us", "projected_8b_speedup", "host_graphed_us",
                                  "projected_graphed_head"],
                           "PROJECTION (not measured): 8B speedup = tau * t1 / (tverify + d * tdraft + host), "
                           "tau and d from the lab-model profiles above; host = an n-gram lookup, k 8B-shape "
                           "Medusa heads' proposal or an 8B-shape EAGLE head's k draft steps (eager, as the decoder "
                           "runs them; *_graphed: the same steps replayed from a CUDA graph, GPU only)")
        common.write_results(out, "speculative_cost", timing, [
            {"name": f"speculative_cost/{r['model']}/w{r['width']}", "value": r["p50_us"], "unit": "us"}
            for r in timing if r["status"] == "ok"], device=dev)
        common.write_results(out, "speculative_projection", proj, [
            {"name": f"speculative_projection/{r['task']}/{r['strategy']}", "value": r["projected_8b_speedup"],
             "unit": "x (projection)"} for r in proj], device=dev)
    common.exit_on_failures("speculative", failures)
    return paths


if __name__ == "__main__":
    app.run(main)
