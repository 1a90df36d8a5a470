"""bench.serving's trace over HTTP (bench/serving_http.py) against an in-process server (lab-small, CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench import serving, serving_http
from serve.openai_server import ServerThread, make_app


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    app = make_app("lab-small", device="cpu", max_num_seqs=4, max_queue=2)
    with ServerThread(app) as s:
        yield s
    torch.set_num_threads(threads)


def _trace(n, rate=math.inf):
    dist = serving.LengthDist("uniform", 0, 0.0, 3, 8)
    return serving.build_trace(n, rate, dist, dist, 8192, seed=5)


def test_replay_counts_429_and_checks_every_token(server):
    """All 10 at t = 0 against 4 slots + a queue of 2: some complete (each with its exact token
    count; at least the first 2, however fast the engine admits), the rest get a 429; the server
    is clean afterwards."""
    trace = _trace(10)
    res, rejected = serving_http.http_replay(server.url, "lab-small", trace, "http", allow_429=True)
    assert rejected >= 1 and len(res.records) >= 2 and len(res.records) + rejected == 10
    for rec in res.records:
        assert rec["output_tokens"] == trace[rec["request"]].max_tokens
        assert rec["ttft_s"] > 0 and rec["e2e_s"] >= rec["ttft_s"]
    row = serving_http._row(res, rejected, len(trace))
    assert row["completed"] == len(res.records) and row["out_tok_per_s"] > 0
    # the same trace may not lose a request when 429s are not allowed
    with pytest.raises(serving_http.HTTPReplayError, match="429"):
        serving_http.http_replay(server.url, "lab-small", trace, "http", allow_429=False)
    serving_http.wait_clean(server.url, None, "after")


def test_replay_outputs_equal_the_engine(server):
    """Greedy fp32 over HTTP: the same tokens as the in-process replay of the same trace."""
    from scheduler import LLMEngine

    import model

    trace = _trace(3, rate=50.0)
    res, rejected = serving_http.http_replay(server.url, "lab-small", trace, "http")
    assert rejected == 0
    engine = LLMEngine(model.load("lab-small", device="cpu"), max_num_seqs=4)
    local = serving.replay(engine, trace, "in-process")
    assert res.outputs == local.outputs


def test_short_answer_is_an_error(server, monkeypatch):
    """A server that stops a request early (planted: max_tokens one short) fails the replay."""
    trace = _trace(1)
    real = serving_http._one

    async def short(url, model, r, t0, api_key):
        return await real(url, model, dataclasses.replace(r, max_tokens=r.max_tokens - 1), t0, api_key)

    monkeypatch.setattr(serving_http, "_one", short)
    with pytest.raises(serving_http.HTTPReplayError, match="returned"):
        serving_http.http_replay(server.url, "lab-small", trace, "http")


def test_http_backend_needs_a_rate(server):
    opts = serving.Options("cpu", torch.float32, "embedded", None, "random", None, ["chunked"], 4, 0.0, 1.0,
                           serving.LengthDist("uniform", 0, 0.0, 3, 8), serving.LengthDist("uniform", 0, 0.0, 3, 8),
                           {}, 0, 4, 0, False)
    with pytest.raises(serving.ServingUsageError, match="--rate"):
        serving_http.run_http(opts, server.url, None, None)
