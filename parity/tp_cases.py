"""Shared cases for the tensor-parallel parity checks: what each rank runs, and the TP=1 reference.

Each case is a random GQA config (model.random_weights, seeded: every rank draws the same
weights and keeps its slices). A rank returns its fp32 logits of one prompt, 64 greedy tokens
(decoding.generate over the static cache) and the engine's tokens on a small random trace;
the parent computes the same with the whole model and compares.
"""

from __future__ import annotations

import os

import torch

from model.config import ModelConfig
from model.random_weights import random_model

# fp32 logits of TP=2 against TP=1: |got - ref| <= 1e-5 * max|ref| + 1e-5 * |ref| (the 1e-5
# relative, scaled by the logits' magnitude so a logit near zero is not held to 1e-5 of itself).
# Measured here (2-core CPU, 2026-11-29): worst error 4.5e-7 of max|ref| for both cases (row-parallel partial sums
# add in another order). A skipped all-reduce (plant_fault) is off by 1.16 of max|ref| and fails.
LOGIT_RTOL = 1e-5
GREEDY_STEPS = 64
SEED = 3
# Random GQA configs: n_kv_heads 2 (each rank holds one KV head) and 1 (replicated on both ranks).
# A small engine: 3 running at most, 16-token steps (chunked prefill), 4-token blocks.
ENGINE_KWARGS = dict(block_size=4, num_blocks=96, max_num_seqs=3, max_num_batched_tokens=16)
CASES = {"kv2": dict(n_kv_heads=2), "kv1": dict(n_kv_heads=1)}


def case_model(name: str):
    """The whole fp32 model of case `name` (tiny preset, 2 layers, n_heads 4)."""
    config = ModelConfig.from_name("tiny").replace(n_layers=2, **CASES[name])
    return random_model(config, seed=SEED)


def prompt(vocab: int = 512) -> list[int]:
    """A fixed 12-token prompt."""
    g = torch.Generator().manual_seed(11)
    return torch.randint(1, vocab, (12,), generator=g).tolist()


def trace(vocab: int = 512) -> list[tuple[list[int], int]]:
    """A small random request trace: (prompt ids, max_tokens) pairs."""
    from parity.engine_cases import random_requests

    return random_requests(5, seed=7, max_prompt=20, max_new=12, vocab=vocab)


def run_case(model) -> dict:
    """Logits of prompt(), 64 greedy tokens, the engine's tokens on trace(): the numbers compared."""
    from decoding.generate import generate
    from scheduler import LLM, SamplingParams

    ids = torch.tensor([prompt()])
    with torch.inference_mode():
        logits = model(ids)[0]  # (T, V)
    tokens = generate(model, prompt(), GREEDY_STEPS).new_ids[0]
    model.remove_caches()
    reqs = trace()
    llm = LLM(model, **ENGINE_KWARGS)
    try:
        outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=m) for _, m in reqs])
    finally:
        llm.engine.close()
    return {"logits": logits, "tokens": tokens, "engine": [o.token_ids for o in outs]}


def plant_fault(model) -> None:
    """The bug the logit check exists to catch: layer 0's o_proj skips its all-reduce."""
    model.model.layers[0].self_attn.o_proj.reduce = lambda x: x


def rank_cases(ctx, names: list[str], fault: bool = True) -> dict:
    """One rank: for each case, shard the whole model by this rank's plan and run_case it; with fault,
    also the logits of the first case with plant_fault (key "fault")."""
    from model.tp import TPPlan, shard_model

    torch.set_num_threads(1)
    out = {}
    for name in names:
        full = case_model(name)
        out[name] = run_case(shard_model(full, TPPlan(full.config, ctx.rank, ctx.world)))
    if fault:
        full = case_model(names[0])
        model = shard_model(full, TPPlan(full.config, ctx.rank, ctx.world))
        plant_fault(model)
        with torch.inference_mode():
            out["fault"] = model(torch.tensor([prompt()]))[0]
    return out


def rank_dies(ctx) -> None:
    """Rank 1 exits abruptly; rank 0 enters an all-reduce it can never finish."""
    if ctx.rank == 1:
        os._exit(3)
    x = torch.ones(4)
    torch.distributed.all_reduce(x)


def rank_hangs(ctx) -> None:
    """Rank 1 stays alive but never joins; rank 0's all-reduce must end at the group's timeout."""
    import time

    if ctx.rank == 1:
        time.sleep(120)
        return
    x = torch.ones(4)
    torch.distributed.all_reduce(x)


def rank_gpu(ctx, names: list[str], steps: int = 32) -> dict:
    """One GPU rank (NCCL): fp32 logits of each case, greedy tokens from the CUDA-graphed static path
    (decoding.fast.FastGenerator: NCCL collectives captured in the graph), and the custom all-reduce
    (kernels/custom_allreduce.py) against NCCL on integer inputs, eager and graphed."""
    from decoding.fast import FastGenerator
    from model.tp import TPPlan, shard_model

    out = {}
    for name in names:
        full = case_model(name).to(ctx.device)
        model = shard_model(full, TPPlan(full.config, ctx.rank, ctx.world))
        del full
        with torch.inference_mode():
            logits = model(torch.tensor([prompt()], device=ctx.device))[0].cpu()
        gen = FastGenerator(model, max_batch_size=1, max_seq_len=64, cuda_graph=True)
        tokens = gen.generate(prompt(), steps).new_ids[0]
        gen.close()
        out[name] = {"logits": logits, "tokens": tokens}
    try:  # the custom all-reduce's own failure is its test's, not the NCCL checks'
        out.update(_custom_checks(ctx, names, steps))
    except Exception as e:  # noqa: BLE001 - reported to test_custom_all_reduce
        out["custom_error"] = f"{type(e).__name__}: {e}"
    return out


def _custom_checks(ctx, names: list[str], steps: int) -> dict:
    """The model with every all-reduce the custom one-shot, and PeerAllReduce against the exact sum."""
    from decoding.cuda_graph import capture_graph
    from decoding.fast import FastGenerator
    from kernels.custom_allreduce import PeerAllReduce, small_message_all_reduce
    from model.tp import TPPlan, set_all_reduce, shard_model

    out = {}
    for name in names[:1]:  # the same model with every all-reduce the custom one-shot
        full = case_model(name).to(ctx.device)
        model = shard_model(full, TPPlan(full.config, ctx.rank, ctx.world))
        del full
        set_all_reduce(model, small_message_all_reduce(PeerAllReduce(None, 1 << 20, ctx.device)))
        with torch.inference_mode():
            logits = model(torch.tensor([prompt()], device=ctx.device))[0].cpu()
        gen = FastGenerator(model, max_batch_size=1, max_seq_len=64, cuda_graph=True)
        out[name + "_custom"] = {"logits": logits, "tokens": gen.generate(prompt(), steps).new_ids[0]}
        gen.close()
    ar = PeerAllReduce(None, 1 << 20, ctx.device)
    checks = {}
    for numel in (4096, 8 * 4096, 64 * 4096):
        xs = [torch.randint(-8, 9, (numel,), generator=torch.Generator().manual_seed(r)).to(torch.bfloat16)
              for r in range(ctx.world)]
        want = sum(x.float() for x in xs)
        x = xs[ctx.rank].to(ctx.device)
        for kind in ("one_shot", "two_shot"):
            fn = getattr(ar, kind)
            checks[f"{kind}_{numel}"] = torch.equal(fn(x).float().cpu(), want)
            graph, res = capture_graph(lambda: fn(x), ctx.device)
            for _ in range(3):  # back-to-back replays of one call reuse one buffer: the end barrier guards it
                graph.replay()
            torch.cuda.synchronize()
            checks[f"{kind}_{numel}_graph"] = torch.equal(res.float().cpu(), want)
    out["custom_allreduce"] = checks
    return out


def reference_gpu(name: str, device, steps: int = 32) -> dict:
    """The same numbers as rank_gpu from the whole model on one GPU."""
    from decoding.fast import FastGenerator

    model = case_model(name).to(device)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt()], device=device))[0].cpu()
    gen = FastGenerator(model, max_batch_size=1, max_seq_len=64, cuda_graph=True)
    tokens = gen.generate(prompt(), steps).new_ids[0]
    gen.close()
    return {"logits": logits, "tokens": tokens}
