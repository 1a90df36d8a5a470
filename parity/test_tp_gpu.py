"""Tensor parallelism on 2 GPUs (NCCL): TP=2 against one GPU, and the custom all-reduce against NCCL.

fp32 logits within parity.tp_cases.LOGIT_RTOL, greedy tokens of the CUDA-graphed static path
identical (NCCL all-reduces and the logits' all-gather captured inside the graph); the same with
every all-reduce the custom one-shot (model.tp.set_all_reduce); PeerAllReduce's one-shot and
two-shot equal to the exact sum of integer inputs, eager and replayed. Skips without two GPUs.
"""

from __future__ import annotations

import pytest
import torch

from model.parallel import run_ranks
from parity import tp_cases
from parity.tolerance import Tol, compare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs")
NAMES = list(tp_cases.CASES)


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(tp_cases.rank_gpu, 2, args=(NAMES,), device="cuda", timeout_s=60)


def _check(got: list, name: str) -> None:
    ref = tp_cases.reference_gpu(name.removesuffix("_custom"), torch.device("cuda", 0))
    tol = Tol(atol=tp_cases.LOGIT_RTOL * float(ref["logits"].abs().max()), rtol=tp_cases.LOGIT_RTOL)
    for rank, out in enumerate(got):
        res = compare(out[name]["logits"], ref["logits"], tol, f"{name} rank {rank}")
        assert res.ok, str(res)
        assert out[name]["tokens"] == ref["tokens"], f"{name} rank {rank}: graphed greedy tokens differ"


@pytest.mark.parametrize("name", NAMES)
def test_tp2_nccl_matches_one_gpu(ranks, name):
    _check(ranks, name)


def test_custom_all_reduce(ranks):
    for rank, out in enumerate(ranks):
        assert "custom_error" not in out, f"rank {rank}: {out.get('custom_error')}"
        bad = [k for k, ok in out["custom_allreduce"].items() if not ok]
        assert not bad, f"rank {rank}: custom all-reduce differs from the exact sum at {bad}"
    _check(ranks, NAMES[0] + "_custom")  # the model with every all-reduce the custom one-shot
