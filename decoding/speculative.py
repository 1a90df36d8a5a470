"""Speculative decoding at batch 1 over the static cache: propose k tokens cheaply, verify them in one
target forward over k + 1 positions, keep the longest accepted prefix plus one token from the target.

    dec = SpeculativeDecoder(target, draft=draft_model, max_seq_len=512)
    out = dec.generate(prompt_ids, 128, SpeculativeConfig("draft", 4))  # SpeculativeResult: ids, times, stats
    ref = dec.plain(prompt_ids, 128)                                   # plain decoding, same caches

Proposers: "draft" (a smaller model with the same vocabulary, run k steps over its own static
cache), "ngram" (prompt lookup: the k tokens that followed the latest earlier occurrence of the
sequence's last n tokens, n from ngram_max down to ngram_min; no model) and "heads" (Medusa-style
heads, decoding/heads.py: head i maps the target's final hidden state of the last emitted token's
predecessor to the token i + 1 after the emitted one; the hidden state comes from the verify forward
that emitted it, read through a HiddenTap, so proposing costs no target forward; chain verification)
and "eagle" (an EAGLE-style one-layer head, decoding/eagle.py: it reads the target's features from the
same tap, (h_{j-1}, t_j) -> h_j, catches its own KV cache up over the tokens the last verify accepted
with their true features, then drafts k tokens feeding its own predicted features back; the draft
loop is draft_proposal's, as for a draft model).

Lossless. Greedy: a proposal is accepted while it equals the target's argmax at its position, and
the target's argmax at the first mismatch (or after the last proposal) is emitted, so the output is
plain greedy's. Sampling (Leviathan et al. 2023; Chen et al. 2023): proposal d_i drawn from q_i is
accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the token is drawn
from normalize(max(0, p_i - q_i)); when all k are accepted a bonus token is drawn from p_{k+1}. Each
emitted token is then distributed exactly as p (the target after temperature/top-k/top-p). n-gram
and heads proposals (the heads' argmax) are point masses (q = one-hot), so the same rule applies.
`verify_sampled` is batched over independent rows so the distribution test draws 20,000+ times in one call.

Rollback: the static cache masks keys by position (key_pos <= query pos), so the K/V written at
rejected positions are never read and are overwritten by the next step; rolling back is just the
committed length. The draft's cache likewise keeps a valid length. Steps run through
decoding.fast.FastGenerator (static buffers; a CUDA graph per width on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from decoding.cuda_graph import capture_graph
from decoding.fast import FastGenerator
from decoding.generate import (ContextLengthError, GenerationResult, NonFiniteLogitsError, _sync,
                               prompt_tensor)
from decoding.heads import HiddenTap
from decoding.sampling import logits_to_probs, sample

METHODS = ("draft", "ngram", "heads", "eagle")
_TAP_WIDTH = 33  # rows the heads' HiddenTap keeps: a verify of up to k + 1 = 33 positions


@dataclass(frozen=True)
class SpeculativeConfig:
    """What proposes tokens and how many: method "draft", "ngram" or "heads", k = num_speculative_tokens."""

    method: str
    num_speculative_tokens: int = 4  # k proposals per target forward (vLLM's and SGLang's usual 3-5)
    ngram_max: int = 4  # longest suffix the n-gram proposer looks up (prompt lookup's usual 3-4)
    ngram_min: int = 1  # shortest; 1 matches often and wrongly, but a wrong proposal costs little
    # Draft: stop proposing once the draft gives its latest proposal less than this probability (that
    # token is still verified). 0 = always k. Lossless either way: it only shortens proposals.
    draft_min_prob: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {', '.join(METHODS)}, got {self.method!r}")
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 32:
            raise ValueError(f"num_speculative_tokens must be an int in [1, 32], got {k!r}")
        if not 0.0 <= self.draft_min_prob < 1.0:
            raise ValueError(f"draft_min_prob must be in [0, 1), got {self.draft_min_prob!r}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}")


@dataclass
class SpecStats:
    """Counts of one generation. A cycle is one target verify forward (k + 1 positions, k >= 0)."""

    cycles: int = 0
    proposed: int = 0  # proposals verified (sum of k)
    accepted: int = 0  # proposals accepted
    draft_forwards: int = 0
    target_forwards: int = 1  # the prefill, then one per cycle

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed (nan when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify forward: accepted proposals + the target's own token (Spec-Bench's tau)."""
        return (self.accepted + self.cycles) / self.cycles if self.cycles else float("nan")


@dataclass
class SpeculativeResult(GenerationResult):
    """GenerationResult of one row plus the speculation counts."""

    stats: SpecStats = field(default_factory=SpecStats)

    @property
    def target_forwards_per_token(self) -> float:
        return self.stats.target_forwards / self.n_new


@dataclass(frozen=True)
class SpecCycle:
    """One verify forward: at new-token index `index`, the proposal, how many were accepted, what was emitted."""

    index: int
    proposal: list
    accepted: int
    emitted: list


def divergence_report(trace: Sequence[SpecCycle], new_ids: Sequence[int], ref: Sequence[int]) -> str:
    """Where new_ids first differs from ref and the cycle that emitted it ("" when they are equal)."""
    i = next((j for j, (a, b) in enumerate(zip(new_ids, ref)) if a != b), None)
    if i is None and len(new_ids) == len(ref):
        return ""
    i = min(len(new_ids), len(ref)) if i is None else i
    if i == 0:
        return f"differs at new-token index 0 (the prefill's token): {new_ids[:1]} vs {ref[:1]}"
    c = next((c for c in trace if c.index <= i < c.index + len(c.emitted)), None)
    if c is None:
        return f"differs at new-token index {i}; no traced cycle emitted it"
    return (f"differs at new-token index {i}, emitted by the verify cycle at index {c.index}: proposed "
            f"{c.proposal}, accepted {c.accepted}, emitted {c.emitted}; plain greedy has "
            f"{list(ref[c.index:c.index + len(c.emitted)])} there")


def ngram_propose(seq: Sequence[int], k: int, ngram_max: int = 4, ngram_min: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of seq's last n tokens (n from
    ngram_max down to ngram_min, the first n that matches wins); [] when nothing matches."""
    arr = np.asarray(seq, dtype=np.int64)
    L = len(arr)
    for n in range(min(ngram_max, L - 1), ngram_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(arr[:L - 1], n)  # starts 0 .. L-1-n
        hits = np.flatnonzero((windows == arr[L - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # the token after the latest match (< L: the match ends before L)
            return arr[start:start + k].tolist()
    return []


def _accept(u: torch.Tensor, p_d: torch.Tensor, q_d: torch.Tensor) -> torch.Tensor:
    """Accept a proposal with probability min(1, p/q): u ~ U[0, 1) and u * q < p (no division)."""
    return u * q_d < p_d


def verify_sampled(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rejection rule over B independent rows: p (B, k+1, V) target probabilities at the k + 1
    positions, q (B, k, V) the proposal distributions, draft (B, k) the proposals drawn from q.

    Returns (n_accepted (B,) long in [0, k], next_token (B,) long): the token after the accepted
    prefix, drawn from normalize(max(0, p_n - q_n)) at the first rejection n, or from p_{k+1} when
    all k were accepted. p and q may be expanded views (nothing of size B*k*V is materialised).
    """
    B, k = draft.shape
    rows = torch.arange(B, device=p.device)
    p_d = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)  # (B, k)
    q_d = q.gather(-1, draft[..., None]).squeeze(-1)  # (B, k)
    u = torch.rand(B, k, generator=generator, device=p.device)
    ok = _accept(u, p_d, q_d)
    n_acc = ok.long().cumprod(-1).sum(-1)  # (B,): length of the accepted prefix
    p_n = p[rows, n_acc]  # (B, V)
    q_n = q[rows, n_acc.clamp(max=k - 1)] * (n_acc < k)[:, None]  # (B, V); zero for the bonus token
    resid = (p_n - q_n).clamp_min(0.0)
    mass = resid.sum(-1, keepdim=True)
    # A rejection means p(d) < q(d), so the residual has mass; the guard only catches rounding to 0.
    resid = torch.where(mass > 0, resid / mass.clamp_min(1e-30), p_n)
    return n_acc, torch.multinomial(resid, 1, generator=generator).squeeze(-1)


def verify_greedy(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[int, int]:
    """target_logits (k+1, V), draft (k,): (accepted count, the target's argmax after them)."""
    best = target_logits.argmax(-1)  # (k+1,)
    k = draft.shape[0]
    n_acc = int((best[:k] == draft).long().cumprod(0).sum()) if k else 0
    return n_acc, int(best[n_acc])


class SpeculativeDecoder:
    """Greedy or sampled speculative generation at batch 1 over long-lived static caches.

    target (and draft, which method "draft" needs) are lab Transformers with the same vocabulary; heads
    (method "heads") a decoding.heads.MedusaHeads for the target (load_heads checks the fit), eagle
    (method "eagle") a decoding.eagle.EagleHead for it (load_eagle checks the fit; its cache is installed here).
    Caches of max_seq_len tokens are installed on both and stay until close(); every method (and
    plain decoding, `plain`) runs over the same caches, so a benchmark compares them in one place.
    cuda_graph replays each step width from a CUDA graph (GPU only; capture=simulate_capture runs the
    same graphed path on CPU for tests); fuse fuses projections (this changes the models' state-dict keys).
    """

    def __init__(self, target, draft=None, max_seq_len: Optional[int] = None, cuda_graph: bool = False,
                 fuse: bool = False, capture: Callable = capture_graph, heads=None, eagle=None):
        max_seq_len = max_seq_len or target.config.max_seq_len
        for name, h in (("heads", heads), ("eagle head", eagle)):
            if h is not None and (h.dim, h.vocab_size) != (target.config.dim, target.config.vocab_size):
                raise ValueError(f"{name} for hidden size {h.dim} / vocabulary {h.vocab_size} do not fit the "
                                 f"target ({target.config.dim} / {target.config.vocab_size})")
        # Installed before any step is built, so every (graphed) target step copies its hidden states out.
        # The EAGLE head reads every row of a prefill too (its cache holds the prompt's features), so its
        # tap is as wide as the context.
        self.heads, self.eagle = heads, eagle
        width = max_seq_len if eagle is not None else _TAP_WIDTH
        self._tap = None if heads is None and eagle is None else HiddenTap(target, width)
        if eagle is not None:
            w = target.lm_head.weight
            eagle.setup_cache(max_seq_len, w.device, w.dtype)
        if draft is not None:
            if draft is target:
                raise ValueError("the draft must be a separate model object (each model holds one cache)")
            if draft.config.vocab_size != target.config.vocab_size:
                raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                                 f"({target.config.vocab_size}); they must share a tokenizer")
            max_seq_len = min(max_seq_len, draft.config.max_seq_len)
        self.max_seq_len = max_seq_len
        self.target = FastGenerator(target, 1, max_seq_len, cuda_graph=cuda_graph, fuse=fuse, capture=capture)
        self.draft = None if draft is None else FastGenerator(draft, 1, max_seq_len, cuda_graph=cuda_graph,
                                                              fuse=fuse, capture=capture)
        self.device = self.target.device
        self._caches = [m.model.layers[0].self_attn.kv_cache for m in (target, draft) if m is not None]

    def close(self) -> None:
        """Drop graphs and caches of both models (and the heads' hidden-state tap)."""
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        if self.eagle is not None:
            self.eagle.remove_cache()
        self.target.close()
        if self.draft is not None:
            self.draft.close()

    def warm(self, config: SpeculativeConfig) -> None:
        """Build (capture, on a GPU) every step width config can use, 1..k+1, before anything is timed."""
        for gen in (self.target, self.draft):
            if gen is not None:
                for w in range(1, config.num_speculative_tokens + 2):
                    gen.step_for(1, w)

    def _forward(self, gen: FastGenerator, ids: list[int], start: int, max_width: int) -> torch.Tensor:
        """Logits (w, V) of ids fed at positions start..start+w-1: a fixed-width step (graphed on a GPU)
        up to max_width = k + 1 wide; wider ones (the draft's first catch-up, a prefill) run eagerly."""
        w = len(ids)
        x = torch.tensor(ids, dtype=torch.long, device=self.device)
        if w <= max_width:
            out = gen.step_for(1, w)(x, start)
            return out if w == 1 else out[0]
        return gen.model(x[None], torch.arange(start, start + w, device=self.device))[0]

    def plain(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: Optional[int] = None,
              top_p: Optional[float] = None, seed: Optional[int] = None,
              eos_id: Optional[int] = None) -> GenerationResult:
        """Plain decoding of the target over the same cache and steps (FastGenerator.generate)."""
        return self.target.generate(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, eos_id)

    @torch.inference_mode()
    def generate(self, prompt_ids: Union[Sequence[int], torch.Tensor], max_new_tokens: int,
                 config: SpeculativeConfig, temperature: float = 0.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 eos_id: Optional[int] = None, trace: Optional[list] = None) -> SpeculativeResult:
        """Generate up to max_new_tokens after one prompt (stops after eos_id, kept as generate keeps it).

        trace: a list that gets one SpecCycle per verify forward (divergence_report reads it)."""
        if config.method == "draft" and self.draft is None:
            raise ValueError("method 'draft' needs a draft model: SpeculativeDecoder(target, draft=...)")
        if config.method == "heads":
            if self._tap is None:
                raise ValueError("method 'heads' needs heads: SpeculativeDecoder(target, heads=load_heads(...))")
            if config.num_speculative_tokens > self.heads.num_heads:
                raise ValueError(f"num_speculative_tokens={config.num_speculative_tokens} exceeds the "
                                 f"{self.heads.num_heads} heads loaded")
        if config.method == "eagle" and self.eagle is None:
            raise ValueError("method 'eagle' needs an EAGLE head: SpeculativeDecoder(target, eagle=load_eagle(...))")
        models = [g.model for g in (self.target, self.draft) if g is not None]
        if any(m.model.layers[0].self_attn.kv_cache is not c for m, c in zip(models, self._caches)):
            raise RuntimeError("the models' caches were replaced since this SpeculativeDecoder installed them "
                               "(another generate or setup_caches ran on them); build a new one")
        prompt = prompt_tensor(prompt_ids, max_new_tokens, self.device)
        if prompt.shape[0] != 1:
            raise ValueError(f"speculative decoding runs one sequence at a time, got a batch of {prompt.shape[0]}")
        T = prompt.shape[1]
        if T + max_new_tokens > self.max_seq_len:
            raise ContextLengthError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the speculative "
                                     f"decoder's max_seq_len={self.max_seq_len}")
        cfg = config
        greedy = temperature == 0.0
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        stats = SpecStats()
        seq = prompt[0].tolist()
        _sync(self.device)
        t0 = time.perf_counter()
        logits = self.target.model(prompt, torch.arange(T, device=self.device))[:, -1]  # (1, V)
        _check_finite(logits, 0)
        seq.append(int(sample(logits, temperature, top_k, top_p, generator)[0]))
        _sync(self.device)
        t_first = time.perf_counter()
        draft_len = 0  # positions of seq whose K/V the draft's cache holds (it prefills on its first cycle)
        fed = (T, T - 1)  # heads: (width of the latest target forward, row whose hidden state precedes seq[-1])
        last = (0, T)  # eagle: (start position, width) of the latest target forward, whose features the tap holds
        eagle_len = 1  # eagle: positions of the head's cache holding true features (position 0 has no h_{-1})
        while len(seq) - T < max_new_tokens and not (eos_id is not None and seq[-1] == eos_id):
            n = len(seq)  # the target's cache holds seq[:n-1]; seq[-1] is not fed yet
            k = min(cfg.num_speculative_tokens, max_new_tokens - (n - T) - 1)
            q = None
            if cfg.method == "ngram":
                proposal = ngram_propose(seq, k, cfg.ngram_max, cfg.ngram_min) if k > 0 else []
            elif cfg.method == "heads":
                proposal = self._heads_propose(k, *fed)
            elif cfg.method == "eagle":
                proposal, q = self._eagle_propose(seq, k, eagle_len, last, temperature, top_k, top_p, generator,
                                                  stats)
            else:
                proposal, q, draft_len = self._draft_propose(seq, k, draft_len, temperature, top_k, top_p,
                                                             generator, stats, cfg.draft_min_prob)
            k = len(proposal)
            logits = self._forward(self.target, [seq[-1]] + proposal, n - 1, cfg.num_speculative_tokens + 1)
            stats.target_forwards += 1
            stats.cycles += 1
            stats.proposed += k
            _check_finite(logits, stats.cycles)
            if k == 0 and not greedy:  # nothing proposed: a plain decode step
                n_acc, nxt = 0, int(sample(logits, temperature, top_k, top_p, generator)[0])
            elif greedy:
                n_acc, nxt = verify_greedy(logits, torch.tensor(proposal, dtype=torch.long, device=self.device))
            else:
                p = logits_to_probs(logits, temperature, top_k, top_p)  # (k+1, V)
                if q is None:  # n-gram proposals are point masses
                    q = torch.zeros(k, p.shape[-1], device=self.device)
                    q[torch.arange(k), proposal] = 1.0
                d = torch.tensor(proposal, dtype=torch.long, device=self.device)
                n_acc_t, nxt_t = verify_sampled(p[None], q[None], d[None], generator)
                n_acc, nxt = int(n_acc_t[0]), int(nxt_t[0])
            stats.accepted += n_acc
            new = proposal[:n_acc] + [nxt]
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id) + 1]
            if trace is not None:
                trace.append(SpecCycle(n - T, proposal, n_acc, new))
            seq += new
            fed = (k + 1, n_acc)
            last, eagle_len = (n - 1, k + 1), n  # the head's entries past position n - 1 used drafted features
            draft_len = min(draft_len, n + n_acc)  # the draft's entries past the accepted prefix are stale
        _sync(self.device)
        t_end = time.perf_counter()
        new_ids = seq[T:]
        return SpeculativeResult(tokens=torch.tensor([seq], dtype=torch.long), new_ids=[new_ids],
                                 prefill_s=t_first - t0, decode_s=t_end - t_first, n_new=len(new_ids), stats=stats)

    def _heads_propose(self, k: int, width: int, row: int) -> list[int]:
        """The heads' k greedy proposals from the hidden state of token `row` of the latest `width`-token
        target forward (the position whose logits gave seq[-1])."""
        if k == 0:
            return []
        h = self._tap.row(width, row)
        return self.heads.logits(h, self.target.model.lm_head, k).argmax(-1).tolist()

    def _eagle_propose(self, seq: list[int], k: int, eagle_len: int, last: tuple, temperature, top_k, top_p,
                       generator, stats: SpecStats):
        """Up to k EAGLE proposals after seq and their distributions (k, V) when sampling. The head's
        cache first catches up over positions eagle_len..n-1 with the true features h_{j-1} of the latest
        target forward (`last` = its start and width), then each drafted token is fed with the feature
        the head predicted for the position before it."""
        if k == 0:
            return [], None
        n = len(seq)
        start, width = last
        target, head = self.target.model, self.eagle
        feats = [self._tap.rows(width, eagle_len - 1 - start, n - 1 - start)]  # h of positions eagle_len-1..n-2
        qs = []

        def forward(ids: list[int], pos: int) -> torch.Tensor:
            x = torch.tensor(ids, dtype=torch.long, device=self.device)[None]
            p = torch.arange(pos, pos + len(ids), device=self.device)
            f = head.features(target, feats[-1][None], x, p)[0]
            feats.append(f[-1:])
            return head.logits(target, f[-1:])

        def sampled(logits):
            q = logits_to_probs(logits, temperature, top_k, top_p)  # (1, V)
            tok = int(torch.multinomial(q, 1, generator=generator))
            qs.append(q[0])
            return tok, True

        proposal = draft_proposal(forward, _eagle_catch_up(seq, eagle_len), eagle_len, k,
                                  greedy_pick() if temperature == 0.0 else sampled)
        stats.draft_forwards += len(proposal)
        return proposal, (torch.stack(qs) if qs else None)

    def _draft_propose(self, seq: list[int], k: int, draft_len: int, temperature, top_k, top_p, generator,
                       stats: SpecStats, min_prob: float = 0.0):
        """Up to k draft tokens after seq (fewer once one's draft probability < min_prob), their
        distributions q (k', V) when sampling, and the draft's valid cache length."""
        if k == 0:
            return [], None, draft_len
        n = len(seq)
        qs = []

        def sampled(logits):
            q = logits_to_probs(logits, temperature, top_k, top_p)  # (1, V)
            tok = int(torch.multinomial(q, 1, generator=generator))
            qs.append(q[0])
            return tok, float(q[0, tok]) >= min_prob

        # catch the draft up (the whole prompt the first time), then k steps
        proposal = draft_proposal(lambda feed, start: self._forward(self.draft, feed, start, k + 1),
                                  seq[draft_len:], draft_len, k,
                                  greedy_pick(min_prob) if temperature == 0.0 else sampled)
        stats.draft_forwards += len(proposal)
        # The draft fed seq and proposal[:-1]: positions < n + len(proposal) - 1 hold K/V.
        return proposal, (torch.stack(qs) if qs else None), n + len(proposal) - 1


def _eagle_catch_up(seq: list[int], eagle_len: int) -> list[int]:
    """The tokens the EAGLE head's catch-up feeds at positions eagle_len..: token t_j goes with the feature
    h_{j-1} (EAGLE's token one step ahead of the feature)."""
    return seq[eagle_len:]


def greedy_pick(min_prob: float = 0.0) -> Callable:
    """draft_proposal's pick for a greedy draft: the argmax, and go on unless its probability < min_prob."""
    def pick(logits: torch.Tensor) -> tuple[int, bool]:
        tok = int(logits.argmax(-1))
        return tok, min_prob == 0.0 or float(logits.float().softmax(-1)[0, tok]) >= min_prob
    return pick


def draft_proposal(forward: Callable[[list[int], int], torch.Tensor], feed: list[int], start: int, k: int,
                   pick: Callable[[torch.Tensor], tuple[int, bool]]) -> list[int]:
    """The draft loop of both speculative paths (SpeculativeDecoder, the engine's DraftProposer): feed
    `feed` at positions start.. (the draft's catch-up), then each proposed token, up to k of them.
    forward(ids, start) -> logits (len(ids), V); pick(logits (1, V)) -> (token, go on): a token the
    draft is unsure of ends the proposal (it is still verified)."""
    proposal: list[int] = []
    for _ in range(k):
        tok, go_on = pick(forward(feed, start)[-1:])
        proposal.append(tok)
        start += len(feed)
        feed = [tok]
        if not go_on:
            break
    return proposal


def _check_finite(logits: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(logits).all()):
        where = "the prefill (step 0)" if step == 0 else f"verify step {step}"
        raise NonFiniteLogitsError(f"the target produced NaN/Inf logits at {where}: the weights hold non-finite "
                                   "values or the activations overflow this dtype (try float32)")


def generate_speculative(target, prompt_ids, max_new_tokens: int, config: SpeculativeConfig, draft=None,
                         temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                         seed: Optional[int] = None, eos_id: Optional[int] = None, cuda_graph: bool = False,
                         fuse: bool = False, heads=None, eagle=None) -> SpeculativeResult:
    """One speculative generation (as decoding.generate is for plain decoding): caches sized to this
    request, installed and removed around it. The entry point of `model.generate --speculative`."""
    T = len(prompt_ids) if not isinstance(prompt_ids, torch.Tensor) else prompt_ids.shape[-1]
    dec = SpeculativeDecoder(target, draft if config.method == "draft" else None, cuda_graph=cuda_graph, fuse=fuse,
                             heads=heads if config.method == "heads" else None,
                             eagle=eagle if config.method == "eagle" else None)
    try:
        if T + max_new_tokens > dec.max_seq_len:
            raise ContextLengthError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = "
                                     f"{T + max_new_tokens} exceeds the model context of {dec.max_seq_len} tokens")
        return dec.generate(prompt_ids, max_new_tokens, config, temperature, top_k, top_p, seed, eos_id)
    finally:
        dec.close()
