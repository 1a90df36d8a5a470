"""Speculative sampling is lossless: the emitted tokens are distributed as the target's, by chi-square.

Two random tiny models (vocabulary 16) give the target p and the draft q at a fixed context, and at
that context followed by every draft token d1 (p2, q2) and every pair d1 d2 (p3): 1 + 16 + 256
contexts in two batched forwards. 40,000 independent rows then run decoding.speculative's own
verify_sampled in one batched call, k = 2: d1 ~ q1, d2 ~ q2[d1], accept/reject, residual, bonus.
Three claims, each a chi-square goodness-of-fit test:
  first token                    ~ p1                     (acceptance at position 1, the residual)
  second token | d1 = x accepted ~ p2[x], pooled over x  (position 2's rule, given an acceptance)
  bonus | d1 d2 = x y accepted   ~ p3[x, y], pooled      (all k accepted: the bonus from p_{k+1})

The bound. Under the null each test's statistic X2 = sum (O - E)^2 / E over its bins (bins with
E < 5 merged, as Cochran's rule asks, so the chi-square approximation holds) is chi-square with
df = bins - groups degrees of freedom. We reject above its 1 - alpha quantile, alpha = 1e-4, from
the Wilson-Hilferty cube-root approximation (no scipy in the lock):
  chi2_{1-alpha}(df) ~ df * (1 - 2/(9 df) + z * sqrt(2/(9 df)))^3,  z = Phi^-1(1 - alpha) = 3.719
(checked against the exact tail, the regularized gamma: within 4% of the exact quantile for
df >= 3, on the high side, and within 1% for df >= 30). The draws are seeded, so the test is deterministic; a
correct sampler fails a given seed with probability 1e-4 per test.

Planted bugs it must catch: always accepting (the emitted tokens follow q, not p) and resampling a
rejection from p instead of normalize(max(0, p - q)) (the classic slip: it over-weights tokens the
draft also likes).
"""

from __future__ import annotations

import pytest
import torch

from decoding import speculative
from decoding.sampling import logits_to_probs
from model.random_weights import random_model
from parity.chi_square import ALPHA, chi2_sf, chi_square, critical_value

V, K, N = 16, 2, 40_000
CONTEXT = [3, 1, 4, 1, 5, 9, 2, 6]


def test_critical_value_is_close_to_the_exact_quantile():
    # Table values first (chi2_{0.999}(10) = 29.588, chi2_{0.99}(100) = 135.807), then the exact tail:
    # at the approximate quantile the true tail probability must be alpha within a factor of 1.5, and
    # the quantile found by bisection on the exact tail within 4% (df < 30; WH errs high there) or 1%.
    assert abs(critical_value(10, 1e-3) - 29.588) < 0.3 and abs(critical_value(100, 1e-2) - 135.807) < 0.3
    assert abs(chi2_sf(10, 29.588) - 1e-3) < 1e-5
    for df in (3, 5, 10, 30, 100, 300):
        crit = critical_value(df)
        assert ALPHA / 1.5 < chi2_sf(df, crit) < ALPHA * 1.5, df
        lo, hi = 0.0, 20.0 * df + 100
        for _ in range(100):
            lo, hi = ((lo + hi) / 2, hi) if chi2_sf(df, (lo + hi) / 2) > ALPHA else (lo, (lo + hi) / 2)
        assert abs(crit - lo) <= (0.04 if df < 30 else 0.01) * lo, (df, crit, lo)


@pytest.fixture(scope="module")
def dists():
    """p1 (V,), q1 (V,), p2 q2 (V, V) indexed by d1, p3 (V, V, V) by d1 d2, for each sampling setting."""
    target = random_model("tiny", vocab_size=V, n_layers=2, seed=1)
    draft = random_model("tiny", vocab_size=V, n_layers=2, seed=2)
    ctx = torch.tensor(CONTEXT)
    one = torch.cat([ctx.expand(V, -1), torch.arange(V)[:, None]], 1)  # (V, T+1)
    two = torch.cat([one.repeat_interleave(V, 0), torch.arange(V).repeat(V)[:, None]], 1)  # (V*V, T+2)
    with torch.no_grad():
        lt0, ld0 = target(ctx[None])[:, -1], draft(ctx[None])[:, -1]
        lt1, ld1 = target(one)[:, -1], draft(one)[:, -1]
        lt2 = target(two)[:, -1]

    def build(temperature, top_k):
        f = lambda lg: logits_to_probs(lg, temperature, top_k)  # noqa: E731
        return f(lt0)[0], f(ld0)[0], f(lt1), f(ld1), f(lt2).view(V, V, V)
    return build


def draws(d, generator_seed=0):
    """Run verify_sampled on N independent rows; return (d1, d2, n_acc, next) tensors."""
    p1, q1, p2, q2, p3 = d
    g = torch.Generator().manual_seed(generator_seed)
    d1 = torch.multinomial(q1.expand(N, V), 1, replacement=True, generator=g)[:, 0]
    d2 = torch.multinomial(q2[d1], 1, generator=g)[:, 0]
    p = torch.stack([p1.expand(N, V), p2[d1], p3[d1, d2]], 1)  # (N, K+1, V)
    q = torch.stack([q1.expand(N, V), q2[d1]], 1)  # (N, K, V)
    n_acc, nxt = speculative.verify_sampled(p, q, torch.stack([d1, d2], 1), g)
    return d1, d2, n_acc, nxt


def statistics(d, generator_seed=0) -> list[tuple[str, float, int]]:
    """(name, X2, df) of the three claims."""
    p1, _, p2, _, p3 = d
    d1, d2, n_acc, nxt = draws(d, generator_seed)
    first = torch.where(n_acc >= 1, d1, nxt)
    out = [("first", *chi_square([(torch.bincount(first, minlength=V), p1)]))]
    second = torch.where(n_acc >= 2, d2, nxt)
    groups = [(torch.bincount(second[(n_acc >= 1) & (d1 == x)], minlength=V), p2[x]) for x in range(V)]
    out.append(("second|d1", *chi_square(groups)))
    groups = []
    for x in range(V):
        for y in range(V):
            sel = (n_acc == 2) & (d1 == x) & (d2 == y)
            if int(sel.sum()) >= 50:
                groups.append((torch.bincount(nxt[sel], minlength=V), p3[x, y]))
    out.append(("bonus|d1d2", *chi_square(groups)))
    return out


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 6)])
def test_emitted_tokens_follow_the_target(dists, temperature, top_k):
    d = dists(temperature, top_k)
    tv = 0.5 * float((d[0] - d[1]).abs().sum())
    assert tv > 0.2  # the draft really differs from the target, or the test would prove nothing
    _, _, n_acc, _ = draws(d)
    assert 0.1 < float(n_acc.float().mean()) / K < 0.9  # acceptances and rejections both happen
    for name, stat, df in statistics(d):
        assert df >= 3, f"{name}: too few bins ({df})"
        crit = critical_value(df)
        assert stat <= crit, f"{name}: chi-square {stat:.1f} > {crit:.1f} (df {df}, alpha {ALPHA})"


def test_always_accept_is_caught(dists, monkeypatch):
    monkeypatch.setattr(speculative, "_accept", lambda u, p_d, q_d: torch.ones_like(u, dtype=torch.bool))
    stat, df = statistics(dists(1.0, None))[0][1:]
    assert stat > critical_value(df), "always accepting went unnoticed"


def test_resampling_from_p_instead_of_the_residual_is_caught(dists, monkeypatch):
    real = speculative.verify_sampled

    def buggy(p, q, draft, generator=None):
        # On rejection the residual normalize(max(0, p - q)) becomes plain p: pass q = 0 at the
        # rejected position (acceptance is decided first with the real q).
        B, k = draft.shape
        p_d = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)
        q_d = q.gather(-1, draft[..., None]).squeeze(-1)
        u = torch.rand(B, k, generator=generator)
        n_acc = (u * q_d < p_d).long().cumprod(-1).sum(-1)
        rows = torch.arange(B)
        nxt = torch.multinomial(p[rows, n_acc], 1, generator=generator).squeeze(-1)
        return n_acc, nxt

    assert real is not buggy
    monkeypatch.setattr(speculative, "verify_sampled", buggy)
    stat, df = statistics(dists(1.0, None))[0][1:]
    assert stat > critical_value(df), "resampling from p went unnoticed"
