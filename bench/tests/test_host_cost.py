"""bench.host_cost: the stubbed trace runs and checks its requests; a wrong token count fails it."""

import dataclasses

import pytest

from bench import host_cost


def test_stubbed_trace_runs_and_times_full_steps():
    assert len(host_cost.measure(num_requests=70)) > 0


def test_a_request_short_of_its_tokens_fails(monkeypatch):
    real = host_cost.SamplingParams

    def one_short(**kw):  # the planted fault: the engine stops a request one token early
        return dataclasses.replace(real(**kw), max_tokens=kw["max_tokens"] - 1)

    monkeypatch.setattr(host_cost, "SamplingParams", one_short)
    with pytest.raises(AssertionError, match="wrong number of tokens"):
        host_cost.measure(num_requests=70)
