"""Speculative decoding in the batching engine: propose, verify on the paged cache, roll back.

    llm = LLM(model, speculative=SpeculativeConfig("ngram", 3))   # or speculative="ngram"
    llm = LLM(model, speculative=SpeculativeConfig("draft", 4), draft_model=draft)
    llm.generate(prompts, SamplingParams(max_tokens=64))          # speculative=False: this request does not

Each step, a running request in decode (one token to feed) that may speculate gets up to k
proposals: from the n-gram proposer (decoding.speculative.ngram_propose over its prompt + outputs)
or from a draft model's greedy continuation (DraftProposer: a static cache per request). The
scheduler feeds [last token] + proposals at k + 1 positions of its paged cache, in the same step as
the other requests (prefill chunks, plain decodes). The runner keeps the logits of all k + 1
positions and verifies them (decoding.speculative's rules: greedy = the prefix that equals the
target's argmax, then the argmax after it; sampling = the rejection rule with the proposals as point
masses, so each emitted token is distributed as the target's). The scheduler advances
num_computed_tokens by 1 + accepted only, so the K/V written at rejected positions is never attended
to (attention reads positions < the sequence length) and is overwritten by the next step, and the
blocks past the accepted length go back to the pool (KVCacheManager.free_tail). Requests with
logprobs, or SamplingParams(speculative=False), never speculate. A speculating step is not replayed
from a decode CUDA graph (its rows are k + 1 wide).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from decoding.sampling import logits_to_probs
from decoding.speculative import (SpeculativeConfig, draft_proposal, greedy_pick, ngram_propose, verify_greedy,
                                  verify_sampled)
from decoding.stopping import LENGTH, stop_reason
from scheduler.outputs import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from scheduler.params import Request, RequestStatus

ENGINE_METHODS = ("ngram", "draft")


def make_proposer(spec: Union[None, str, SpeculativeConfig], max_model_len: int, draft_model=None,
                  target=None, scheduler=None):
    """LLMEngine's `speculative` (None, a method name or a SpeculativeConfig) and `draft_model` as the
    scheduler's proposer (None: no speculation); ValueError naming the argument when they do not fit."""
    if spec is None:
        if draft_model is not None:
            raise ValueError("draft_model given without speculative='draft'")
        return None
    if isinstance(spec, str):
        spec = SpeculativeConfig(spec)
    if not isinstance(spec, SpeculativeConfig):
        raise ValueError(f"speculative must be None, a method name or a SpeculativeConfig, got {type(spec).__name__}")
    if spec.method not in ENGINE_METHODS:
        raise ValueError(f"the engine speculates with {', '.join(ENGINE_METHODS)}, got {spec.method!r}")
    if spec.method == "ngram":
        if draft_model is not None:
            raise ValueError("draft_model is for speculative='draft', not 'ngram'")
        return NgramProposer(spec, max_model_len)
    if draft_model is None:
        raise ValueError("speculative='draft' needs draft_model= (a lab Transformer with the target's vocabulary)")
    if draft_model is target:
        raise ValueError("the draft model must be a separate model object (it holds its own caches)")
    if draft_model.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft_model.config.vocab_size}) differs from the target's "
                         f"({target.config.vocab_size}); they must share a tokenizer")
    if draft_model.model.embed_tokens.weight.device != target.model.embed_tokens.weight.device:
        raise ValueError(f"the draft model is on {draft_model.model.embed_tokens.weight.device}, the target on "
                         f"{target.model.embed_tokens.weight.device}; put both on one device")
    if draft_model.config.max_seq_len < max_model_len:
        raise ValueError(f"the draft's context ({draft_model.config.max_seq_len}) is shorter than max_model_len "
                         f"({max_model_len})")
    return DraftProposer(spec, max_model_len, draft_model, scheduler)


class NgramProposer:
    """The scheduler's proposer: up to k n-gram proposals for a decoding request, and the counts."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config, self.max_model_len = config, max_model_len
        self.steps = self.proposed = self.accepted = 0  # verify rows, proposals, accepted proposals

    def num_proposals(self, req: Request, max_new: int) -> int:
        """How many proposals req may get (0: it decodes plainly)."""
        p = req.params
        if not p.speculative or p.logprobs is not None:
            return 0
        # Never past max_tokens (the last proposal's successor is the last token) nor the context.
        return max(0, min(self.config.num_speculative_tokens, max_new, p.max_tokens - req.num_output_tokens - 1,
                          self.max_model_len - req.num_tokens))

    def __call__(self, req: Request, max_new: int) -> list[int]:
        """Proposals for req (which has one token to feed), at most max_new of them ([] = decode plainly)."""
        k = self.num_proposals(req, max_new)
        return ngram_propose(req.token_ids, k, self.config.ngram_max, self.config.ngram_min) if k else []


class DraftProposer(NgramProposer):
    """Draft-model proposals: the draft's greedy continuation, k tokens, over a static cache per request.

    Each request gets its own one-row StaticKVCache per draft layer (swapped into the draft for its
    turn) and the list of tokens whose K/V it holds; each call first feeds the draft the request's
    tokens past their common prefix (the prompt the first time; after a rejection, from the first
    rejected position), so rollback, preemption and a proposal the scheduler dropped need no hook.
    Proposals are the draft's argmax: a deterministic function of the context, so the rejection rule
    treats them as point masses (as n-gram ones) and sampling stays exact. Requests run one after
    another (not batched): simple, and the draft's cost grows with the batch. Finished requests'
    caches are dropped on the next call.
    """

    def __init__(self, config: SpeculativeConfig, max_model_len: int, draft, scheduler):
        super().__init__(config, max_model_len)
        self.draft, self.scheduler = draft.eval(), scheduler
        draft.setup_caches(1, max_model_len, attention="sdpa")  # the RoPE tables and the attend function
        self._attend = draft.model.layers[0].self_attn.attend
        self._state: dict = {}  # request id -> (per-layer caches, tokens whose K/V they hold)

    def _caches(self) -> list:
        from cache.static_cache import StaticKVCache

        c, w = self.draft.config, self.draft.model.embed_tokens.weight
        return [StaticKVCache(1, c.n_kv_heads, self.max_model_len, c.head_dim, w.dtype, w.device)
                for _ in self.draft.model.layers]

    @torch.inference_mode()
    def __call__(self, req: Request, max_new: int) -> list[int]:
        k = self.num_proposals(req, max_new)
        if k == 0:
            return []
        if self.scheduler is not None and len(self._state) > len(self.scheduler.requests):
            self._state = {rid: st for rid, st in self._state.items() if rid in self.scheduler.requests}
        caches, fed = self._state.get(req.request_id) or (self._caches(), [])
        for layer, cache in zip(self.draft.model.layers, caches):
            layer.self_attn.set_cache(cache, self._attend)
        seq = req.token_ids
        start = next((i for i, (a, b) in enumerate(zip(fed, seq)) if a != b), min(len(fed), len(seq)))
        start = min(start, len(seq) - 1)  # feed at least the last token: its logits give the first proposal
        device = self.draft.model.embed_tokens.weight.device

        def forward(ids: list[int], pos: int) -> torch.Tensor:
            x = torch.tensor([ids], dtype=torch.long, device=device)
            return self.draft(x, torch.arange(pos, pos + len(ids), device=device))[0]

        proposal = draft_proposal(forward, seq[start:], start, k, greedy_pick(self.config.draft_min_prob))
        self._state[req.request_id] = (caches, list(seq) + proposal[:-1])
        return proposal


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
