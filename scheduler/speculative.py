"""Speculative decoding in the batching engine: propose, verify on the paged cache, roll back.

    llm = LLM(model, speculative=SpeculativeConfig("ngram", 3))   # or speculative="ngram"
    llm.generate(prompts, SamplingParams(max_tokens=64))          # speculative=False: this request does not

Each step, a running request in decode (one token to feed) that may speculate gets up to k
proposals from the n-gram proposer (decoding.speculative.ngram_propose over its prompt + outputs;
no draft model state to keep). The scheduler feeds [last token] + proposals at k + 1 positions of
its paged cache, in the same step as the other requests (prefill chunks, plain decodes). The runner
keeps the logits of all k + 1 positions and verifies them (decoding.speculative's rules: greedy =
the prefix that equals the target's argmax, then the argmax after it; sampling = the rejection rule
with the proposals as point masses, so each emitted token is distributed as the target's). The
scheduler advances num_computed_tokens by 1 + accepted only, so the K/V written at rejected
positions is never attended to (attention reads positions < the sequence length) and is overwritten
by the next step, and the blocks past the accepted length go back to the pool
(KVCacheManager.free_tail). Requests with logprobs, or SamplingParams(speculative=False), never
speculate. A speculating step is not replayed from a decode CUDA graph (its rows are k + 1 wide).
Not yet: a draft-model proposer (the engine would keep a draft paged cache per request).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from decoding.sampling import logits_to_probs
from decoding.speculative import SpeculativeConfig, ngram_propose, verify_greedy, verify_sampled
from decoding.stopping import LENGTH, stop_reason
from scheduler.outputs import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from scheduler.params import Request, RequestStatus

ENGINE_METHODS = ("ngram",)


def speculative_config(spec: Union[None, str, SpeculativeConfig]) -> Optional[SpeculativeConfig]:
    """LLMEngine's `speculative` argument as a config: None, a method name, or a SpeculativeConfig."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = SpeculativeConfig(spec)
    if not isinstance(spec, SpeculativeConfig):
        raise ValueError(f"speculative must be None, a method name or a SpeculativeConfig, got {type(spec).__name__}")
    if spec.method not in ENGINE_METHODS:
        raise ValueError(f"the engine speculates with {', '.join(ENGINE_METHODS)} only, got {spec.method!r} "
                         f"(draft-model speculation runs at batch 1: decoding.speculative.SpeculativeDecoder)")
    return spec


class NgramProposer:
    """The scheduler's proposer: up to k n-gram proposals for a decoding request, and the counts."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config, self.max_model_len = config, max_model_len
        self.steps = self.proposed = self.accepted = 0  # verify rows, proposals, accepted proposals

    def __call__(self, req: Request, max_new: int) -> list[int]:
        """Proposals for req (which has one token to feed), at most max_new of them ([] = decode plainly)."""
        p = req.params
        if not p.speculative or p.logprobs is not None:
            return []
        # Never past max_tokens (the last proposal's successor is the last token) nor the context.
        k = min(self.config.num_speculative_tokens, max_new, p.max_tokens - req.num_output_tokens - 1,
                self.max_model_len - req.num_tokens)
        if k <= 0:
            return []
        return ngram_propose(req.token_ids, k, self.config.ngram_max, self.config.ngram_min)


def output_rows(reqs: list[ScheduledRequest], query_start_loc: list[int]) -> list[int]:
    """The flat rows whose logits a step keeps: each sampling request's last row, and a speculating
    request's k + 1 last rows (its last known token and its k proposals), in request order."""
    rows = []
    for r, s in enumerate(reqs):
        if s.sample:
            end = query_start_loc[r + 1]
            rows.extend(range(end - 1 - len(s.draft_token_ids), end))
    return rows


def verify_output(runner, sched: SchedulerOutput, logits: torch.Tensor) -> ModelRunnerOutput:
    """The runner's output for a step with speculating requests: logits has output_rows' rows. Plain
    requests sample as always (runner._output); each speculating one is verified against its rows."""
    plain, plain_rows, spec, row = [], [], [], 0
    for s in sched.scheduled:
        if not s.sample:
            continue
        if s.draft_token_ids:
            spec.append((s, row))
        else:
            plain.append(s)
            plain_rows.append(row)
        row += 1 + len(s.draft_token_ids)
    if plain:
        out = runner._output(dataclasses.replace(sched, scheduled=plain), logits[plain_rows])
    else:
        out = ModelRunnerOutput(errors=runner.errors)
    for s, row in spec:
        rid = s.request_id
        if rid in out.errors:
            continue
        try:
            n_acc, nxt = _verify(runner, rid, logits[row:row + 1 + len(s.draft_token_ids)], s.draft_token_ids)
        except Exception as e:  # noqa: BLE001 - that request fails alone, as a sampling error does
            out.errors[rid] = f"{type(e).__name__}: {e}"
            continue
        out.accepted_token_ids[rid] = list(s.draft_token_ids[:n_acc])
        out.sampled_token_ids[rid] = nxt
    return out


def _verify(runner, rid: str, logits: torch.Tensor, draft: tuple) -> tuple[int, int]:
    """(accepted count, the token after them) for one request's k + 1 logits rows and k proposals."""
    p = runner.params[rid]
    d = torch.tensor(draft, dtype=torch.long, device=logits.device)
    if p.temperature == 0.0:
        return verify_greedy(logits, d)
    probs = logits_to_probs(logits, p.temperature, p.top_k, p.top_p)  # (k+1, V)
    q = torch.zeros(len(draft), probs.shape[-1], dtype=probs.dtype, device=probs.device)
    q[torch.arange(len(draft)), d] = 1.0  # n-gram proposals are point masses
    n_acc, nxt = verify_sampled(probs[None], q[None], d[None], runner.generators.get(rid))
    return int(n_acc[0]), int(nxt[0])


def apply_verified(scheduler, req: Request, s: ScheduledRequest, result: ModelRunnerOutput) -> bool:
    """Scheduler.update_from_output for a speculating request: count the fed token and the accepted
    proposals as computed (the rejected ones are not: the rollback), free the blocks past them, append
    the accepted tokens and the sampled one (stopping at a stop token, max_tokens or the context).
    Returns whether req got tokens."""
    rid = s.request_id
    accepted = result.accepted_token_ids.get(rid)
    if accepted is None:
        return False  # its verification failed: the engine finished it with the error
    fed = len(s.token_ids) - len(s.draft_token_ids)  # 1: the last known token
    req.num_computed_tokens += fed + len(accepted)
    scheduler.kv.free_tail(rid, req.num_computed_tokens)  # roll back the rejected slots' blocks
    proposer = scheduler.proposer
    proposer.steps += 1
    proposer.proposed += len(s.draft_token_ids)
    proposer.accepted += len(accepted)
    reason = None
    for tok in accepted + [result.sampled_token_ids[rid]]:
        req.token_ids.append(tok)
        reason = stop_reason(tok, req.num_output_tokens, req.params.max_tokens, req.params.stop_token_ids)
        if reason is None and req.num_tokens >= scheduler.config.max_model_len:
            reason = LENGTH
        if reason is not None:
            break
    # Blocks full of computed tokens (a stop may have cut the tokens short of the computed count).
    scheduler.kv.cache_full_blocks(rid, req.token_ids, min(req.num_computed_tokens, req.num_tokens))
    if reason is not None:
        scheduler.finish_request(req, RequestStatus(reason))
    return True
