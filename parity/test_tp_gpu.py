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


def test_llm_tensor_parallel_on_gpus(tmp_path):
    """LLM(path, tensor_parallel_size=2) over NCCL (fp32, eager steps) gives one GPU's engine tokens."""
    from model.weights import save_model
    from scheduler import LLM, SamplingParams

    save_model(tp_cases.case_model("kv1"), str(tmp_path / "ckpt"))
    reqs = tp_cases.trace()
    params = [SamplingParams(max_tokens=m) for _, m in reqs]
    kw = dict(device="cuda", dtype=torch.float32, cuda_graph=False, **tp_cases.ENGINE_KWARGS)
    one = LLM(str(tmp_path / "ckpt"), **kw)
    want = [o.token_ids for o in one.generate([p for p, _ in reqs], params)]
    one.close()
    two = LLM(str(tmp_path / "ckpt"), tensor_parallel_size=2, timeout_s=60, **kw)
    try:
        got = [o.token_ids for o in two.generate([p for p, _ in reqs], params)]
    finally:
        two.close()
    assert got == want
