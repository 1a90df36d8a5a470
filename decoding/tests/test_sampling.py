"""Samplers: greedy, seeded reproducibility, top-k support, top-p mass, argument errors."""


import pytest
import torch


from decoding.sampling import logits_to_probs, sample


def logits(b=4, v=50, seed=0):
    """Random (B, V) logits."""
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    x = logits()
    assert torch.equal(sample(x), x.argmax(-1))
    assert torch.equal(sample(x, temperature=0.0, top_k=3, top_p=0.5), x.argmax(-1))
    assert sample(x).dtype == torch.long and sample(x).shape == (4,)


def test_seeded_reproducible():
    x = logits(b=8, v=1000)
    draws = [sample(x, 1.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_top_k_only_samples_top_k():
    x = logits(b=2, v=30, seed=1)
    allowed = torch.topk(x, 5, dim=-1).indices
    g = torch.Generator().manual_seed(0)
    seen = torch.stack([sample(x, 2.0, top_k=5, generator=g) for _ in range(400)])  # (400, B)
    for b in range(2):
        assert set(seen[:, b].tolist()) <= set(allowed[b].tolist())
        assert len(set(seen[:, b].tolist())) == 5  # high temperature: all five show up


def test_top_p_keeps_smallest_set_reaching_mass():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    probs = logits_to_probs(x, 1.0, top_p=0.7)
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    probs = logits_to_probs(x, 1.0, top_p=0.85)  # 0.5 + 0.3 < 0.85: third token needed
    assert (probs > 0).tolist() == [[True, True, True, False]]
    assert logits_to_probs(x, 1.0, top_p=0.1)[0, 0] == 1.0  # the top token always stays
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(x, 1.0, top_p=0.7, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}


def test_temperature_sharpens():
    x = logits(b=1, v=10)
    hot, cold = logits_to_probs(x, 5.0), logits_to_probs(x, 0.2)
    assert cold.max() > hot.max()
    assert torch.allclose(hot.sum(-1), torch.ones(1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature must be 0"),
    (dict(temperature=1e-40), r"temperature must be 0 \(greedy\) or a finite value >= 1e-05"),
    (dict(temperature=float("nan")), "temperature must be 0"),
    (dict(temperature=float("inf")), "temperature must be 0"),
    (dict(temperature=1.0, top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1.0, top_k=0), "top_k must be a positive int"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1.0, top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(logits(), **kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"logits must be \(B, V\), got shape \(50,\)"):
        sample(torch.zeros(50))


def _settings(rows):
    """(temperatures, top_ks, top_ps) tensors for batch_probs from (t, k, p) rows (None = off)."""
    return (torch.tensor([t for t, _, _ in rows]), torch.tensor([k or 0 for _, k, _ in rows]),
            torch.tensor([1.0 if p is None else p for _, _, p in rows]))


ROWS = [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.5, 10, 0.6), (2.0, 1, None), (0.9, 200, 0.95)]


def test_batch_probs_equals_logits_to_probs_row_by_row():
    # fp32 softmax of the same values: equal within a few ulps (tolerance 1e-6 abs on probabilities).
    from decoding.sampling import batch_probs
    x = logits(b=len(ROWS), v=100, seed=3)
    got = batch_probs(x, *_settings(ROWS))
    want = torch.cat([logits_to_probs(x[r:r + 1], t, k, p) for r, (t, k, p) in enumerate(ROWS)])
    assert (got > 0).sum(-1).tolist() == (want > 0).sum(-1).tolist()  # the same tokens survive
    assert (got - want).abs().max() <= 1e-6
    # A planted fault the comparison catches: one temperature for the whole batch.
    wrong = batch_probs(x, torch.full((len(ROWS),), ROWS[0][0]), *_settings(ROWS)[1:])
    assert not (wrong - want).abs().max() <= 1e-6


def test_sample_batch_draws_only_allowed_tokens_and_top_k_1_is_greedy():
    from decoding.sampling import sample_batch
    x = logits(b=len(ROWS), v=100, seed=4).repeat(50, 1)
    t, k, p = (s.repeat(50) for s in _settings(ROWS))
    torch.manual_seed(0)
    draws = sample_batch(x, t, k, p)
    allowed = torch.cat([logits_to_probs(x[r:r + 1], t[r].item(), int(k[r]) or None,
                                         None if p[r] == 1 else p[r].item()) for r in range(len(x))]) > 0
    assert allowed.gather(-1, draws[:, None]).all()
    top1 = k == 1
    assert torch.equal(draws[top1], x[top1].argmax(-1))


def test_phase_ranges_reach_the_profiler_only_while_it_records():
    from decoding.ranges import phase
    with phase("outside"):  # no profiler: nothing to record, and no error
        pass
    with torch.profiler.profile() as prof:
        with phase("inside"):
            torch.ones(3).add_(1)
    names = {e.key for e in prof.key_averages()}
    assert "lab::inside" in names and "lab::outside" not in names
