"""Tensor parallelism (model/tp.py) on CPU: TP=2 with gloo in two processes against TP=1.

For n_kv_heads 2 (split) and 1 (replicated): fp32 logits within parity.tp_cases.LOGIT_RTOL,
64 greedy tokens identical, the engine's tokens on a random trace identical; both ranks return
the same numbers. A planted fault (a skipped all-reduce) must fail the logit check; a rank that
dies or hangs must end the launch with an error naming it, not a hang. Also: a tp that does not
divide the model is one error naming the sizes, and a checkpoint rank reads only its slices.
"""

from __future__ import annotations

import time

import pytest
import torch

from model.config import ConfigError, ModelConfig
from model.parallel import RankError, run_ranks
from model.tp import TPPlan, check_tp
from parity import tp_cases
from parity.tolerance import Tol, compare

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return {name: tp_cases.run_case(tp_cases.case_model(name)) for name in tp_cases.CASES}


@pytest.fixture(scope="module")
def tp2():
    return run_ranks(tp_cases.rank_cases, 2, args=(list(tp_cases.CASES),), device="cpu", timeout_s=TIMEOUT_S)


def logit_tol(ref: torch.Tensor) -> Tol:
    return Tol(atol=tp_cases.LOGIT_RTOL * float(ref.abs().max()), rtol=tp_cases.LOGIT_RTOL)


@pytest.mark.parametrize("name", list(tp_cases.CASES))
def test_tp2_matches_tp1(name, reference, tp2):
    ref = reference[name]
    assert len(set(ref["tokens"])) > 8, "the reference's greedy output is degenerate; the check would be weak"
    for rank, got in enumerate(tp2):
        got = got[name]
        result = compare(got["logits"], ref["logits"], logit_tol(ref["logits"]), f"{name} rank {rank} logits")
        assert result.ok, str(result)
        assert got["tokens"] == ref["tokens"], f"{name} rank {rank}: greedy tokens differ from TP=1"
        assert got["engine"] == ref["engine"], f"{name} rank {rank}: engine tokens differ from TP=1"
    assert torch.equal(tp2[0][name]["logits"], tp2[1][name]["logits"]), "ranks disagree on the gathered logits"


def test_skipped_all_reduce_is_caught(reference, tp2):
    """The planted fault: layer 0's o_proj without its all-reduce. The logit check must reject it."""
    name = list(tp_cases.CASES)[0]
    ref = reference[name]["logits"]
    assert not compare(tp2[0]["fault"], ref, logit_tol(ref)).ok


@pytest.mark.parametrize("fn,what", [(tp_cases.rank_dies, "rank 1"), (tp_cases.rank_hangs, "rank 0")])
def test_dead_or_stuck_rank_ends_the_launch(fn, what):
    """A rank that exits (rank 1) or a collective that never completes (rank 0 times out) ends the
    launch with a RankError naming the rank, in seconds, not a hang."""
    t0 = time.monotonic()
    with pytest.raises(RankError, match=what):
        run_ranks(fn, 2, device="cpu", timeout_s=3.0)
    assert time.monotonic() - t0 < 45


def test_tp_that_does_not_divide_is_one_error():
    config = ModelConfig.from_name("tiny")  # n_heads 4, n_kv 2, intermediate 192, vocab 512
    with pytest.raises(ConfigError, match=r"tensor-parallel size 3 does not divide n_heads \(4\)"):
        check_tp(config, 3)
    with pytest.raises(ConfigError, match=r"n_kv_heads \(3; tp must divide"):
        check_tp(config.replace(n_heads=6, n_kv_heads=3, head_dim=16), 2)
    check_tp(config.replace(n_kv_heads=1), 4)  # replicated KV: fine


def test_plan_slices():
    """Rank slices: KV heads split when tp divides them, the one KV head its queries read otherwise."""
    config = ModelConfig.from_name("llama3-8b")  # 32 heads, 8 KV heads
    assert [TPPlan(config, r, 16).kv_start for r in range(16)] == [r // 2 for r in range(16)]
    p = TPPlan(config, 1, 4)
    assert p.index("model.layers.0.self_attn.k_proj.weight") == (slice(256, 512),)
    assert p.index("model.layers.3.mlp.down_proj.weight") == (slice(None), slice(3584, 7168))
    assert p.index("lm_head.weight") == (slice(32064, 64128),)
    assert p.index("model.norm.weight") is None


def test_checkpoint_rank_reads_its_slices(tmp_path):
    """A rank loaded from safetensors holds exactly the slices shard_model cuts from the whole model."""
    from model.tp import shard_model
    from model.weights import load_model, save_model

    full = tp_cases.case_model("kv1")
    save_model(full, str(tmp_path / "ckpt"))
    for rank in range(2):
        plan = TPPlan(full.config, rank, 2)
        got = load_model(str(tmp_path / "ckpt"), tp=lambda c: TPPlan(c, rank, 2)).state_dict()
        want = shard_model(full, plan).state_dict()
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_llm_tensor_parallel_matches_tp1(tmp_path, reference):
    """LLM(path, tensor_parallel_size=2): two spawned ranks, each an engine over its checkpoint slices;
    rank 0's outputs equal the TP=1 engine's on the same trace."""
    from scheduler import LLM, SamplingParams
    from model.weights import save_model

    save_model(tp_cases.case_model("kv2"), str(tmp_path / "ckpt"))
    reqs = tp_cases.trace()
    llm = LLM(str(tmp_path / "ckpt"), tensor_parallel_size=2, device="cpu", timeout_s=TIMEOUT_S,
              **tp_cases.ENGINE_KWARGS)
    try:
        outs = llm.generate([p for p, _ in reqs], [SamplingParams(max_tokens=m) for _, m in reqs])
    finally:
        llm.close()
    assert [o.token_ids for o in outs] == reference["kv2"]["engine"]
    assert all(o.finished for o in outs)


def test_generate_binary_tp2_matches_tp1():
    """model.generate --tp 2 starts its two ranks itself; rank 0's tokens equal --tp 1's."""
    from model.generate import Options, run_ranks_or_one

    opts = Options(checkpoint="embedded", prompt="abc", max_new_tokens=12, device="cpu", dtype="float32")
    one = run_ranks_or_one(opts)
    two = run_ranks_or_one(Options(**{**opts.__dict__, "tp": 2}))
    assert two["tp"] == 2 and two["output_ids"] == one["output_ids"]
    assert len(set(one["output_ids"])) > 4, "degenerate output would make the comparison weak"


def test_too_few_gpus_is_one_error(capsys):
    """--tp 2 --device cuda on a host without 2 GPUs: one line, exit 1, no rank started."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this host has 2 GPUs")
    from model import generate

    generate.FLAGS(["generate", "--tp", "2", "--device", "cuda", "--checkpoint", "embedded", "--prompt", "abc"])
    assert generate.main(["generate"]) == 1
    err = capsys.readouterr().err
    assert "2 tensor-parallel ranks need 2 GPUs" in err and "Traceback" not in err
