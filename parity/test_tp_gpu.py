"""Tensor parallelism on 2 GPUs (NCCL): TP=2 against one GPU, and the custom all-reduce against NCCL.

fp32 logits within parity.tp_cases.LOGIT_RTOL, greedy tokens of the CUDA-graphed static path
identical (NCCL all-reduces and the logits' all-gather captured inside the graph); the custom
one-shot / two-shot all-reduce equal to the exact sum of integer inputs, eager and replayed.
Skips without two GPUs.
"""

from __future__ import annotations

import pytest
import torch

from model.parallel import run_ranks
from parity import tp_cases
from parity.tolerance import Tol, compare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs")


def test_tp2_on_gpus_matches_one_gpu():
    names = list(tp_cases.CASES)
    got = run_ranks(tp_cases.rank_gpu, 2, args=(names,), device="cuda", timeout_s=120)
    for name in names + [names[0] + "_custom"]:  # _custom: every all-reduce the custom one-shot
        ref = tp_cases.reference_gpu(name.removesuffix("_custom"), torch.device("cuda", 0))
        tol = Tol(atol=tp_cases.LOGIT_RTOL * float(ref["logits"].abs().max()), rtol=tp_cases.LOGIT_RTOL)
        for rank, out in enumerate(got):
            res = compare(out[name]["logits"], ref["logits"], tol, f"{name} rank {rank}")
            assert res.ok, str(res)
            assert out[name]["tokens"] == ref["tokens"], f"{name} rank {rank}: graphed greedy tokens differ"
    for rank, out in enumerate(got):
        bad = [k for k, ok in out["custom_allreduce"].items() if not ok]
        assert not bad, f"rank {rank}: custom all-reduce differs from the exact sum at {bad}"
