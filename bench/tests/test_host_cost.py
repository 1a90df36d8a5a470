"""bench.host_cost: the stubbed trace runs and checks its requests; a wrong token count fails it."""

import dataclasses
import json

import pytest

from bench import host_cost


def test_stubbed_trace_runs_and_times_full_steps(tmp_path, monkeypatch):
    times = host_cost.measure(num_requests=70)
    assert len(times) > 0 and all(t > 0 for t in times)
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    paths = host_cost.report(times, "none")
    assert {p.name for p in paths.values()} >= {"host_cost.csv", "host_cost.json", "summary.json", "host_cost.png"}
    names = {r["name"] for r in json.loads((tmp_path / "summary.json").read_text())}
    assert names == {"host_cost/none/p50", "host_cost/none/mean"}


def test_a_request_short_of_its_tokens_fails(monkeypatch):
    real = host_cost.SamplingParams

    def one_short(**kw):  # the planted fault: the engine stops a request one token early
        return dataclasses.replace(real(**kw), max_tokens=kw["max_tokens"] - 1)

    monkeypatch.setattr(host_cost, "SamplingParams", one_short)
    with pytest.raises(AssertionError, match="wrong number of tokens"):
        host_cost.measure(num_requests=70)
