"""Planted faults: each one must be rejected by the same check the real parity test runs.

Every case first runs its check on the unmutated code (it must pass, so the case is not
vacuous), then monkeypatches one library function or kernel with a faulty twin and runs
the check again: it must fail with an AssertionError (a crash elsewhere would not prove
that the check itself catches the fault). Tiny shapes; the Triton faces run through
Triton's interpreter on the CPU (TRITON_INTERPRET=1, set by this file's target).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from decoding.generate import generate
from kernels import _triton
from kernels import flash_attention as fa
from kernels import rms_norm as rms
from kernels.tests import attention_cases as ac
from kernels import fused_moe
from model import arch, layers, masks, moe
from model import paged_attention as pa
from model import llama
from model.llama import TransformerBlock
from parity import engine_cases, hf_cases, moe_cases, paged_cases
from parity import kernel_cases as kc
from scheduler.scheduler import Scheduler

needs_triton = pytest.mark.skipif(_triton.run_device() is None, reason="needs a GPU or TRITON_INTERPRET=1")


# ------------------------------------------------------------------------ faulty twins
# Each takes the real function and returns its twin with one planted fault.

def zeroed_last_column(real):
    """RMSNorm that writes every element but zeroes the last column."""
    def twin(x, weight, eps=1e-6, out=None):
        out = real(x, weight, eps, out=out)
        out[..., -1] = 0
        return out
    return twin


def skipped_row(real):
    """RMSNorm whose launch covers one row fewer (the last row stays unwritten)."""
    def twin(x, weight, eps=1e-6, out=None):
        real(x[:-1], weight, eps, out=out[:-1])
        return out
    return twin


def wrong_eps(real):
    """RMSNorm that ignores the eps it is given and uses 1e-5 (HF's default)."""
    return lambda x, weight, eps=1e-6, out=None: real(x, weight, 1e-5, out=out)


def rope_halves_swapped(real):
    """RoPE with the sign on the wrong half: (s, -s) instead of (-s, s), a rotation by -theta."""
    return lambda x, cos, sin_signed: real(x, cos, -sin_signed)


def missing_softmax_scale(real):
    """Flash attention with sm_scale 1 instead of 1/sqrt(D)."""
    return lambda q, k, v, causal=False, sm_scale=None, **kw: real(q, k, v, causal, 1.0, **kw)


def kv_write_off_by_one(real):
    """Paged cache write at slot + 1 (a position off by one)."""
    def twin(k_cache, v_cache, slot_mapping, k, v):
        total = k_cache.shape[0] * k_cache.shape[1]
        real(k_cache, v_cache, (slot_mapping + 1) % total, k, v)
    return twin


def wrong_block(real):
    """gather_kv reading through a block table whose used entries are rotated by one."""
    def twin(cache, block_table_row, seq_len):
        n = -(-seq_len // cache.shape[1])
        return real(cache, torch.cat([block_table_row[:n].roll(1), block_table_row[n:]]), seq_len)
    return twin


def stop_token_ignored(real):
    """The scheduler's update no longer sees any request's stop tokens."""
    def twin(self, sched, result):
        for req in self.requests.values():
            req.params = dataclasses.replace(req.params, stop_token_ids=())
        return real(self, sched, result)
    return twin


def dropped_residual(real):
    """Each decoder block drops the residual stream it is handed."""
    return lambda self, x, residual, *args: real(self, x, None, *args)


def window_off_by_one(real):
    """Sliding-window mask that lets one key too many in (window + 1)."""
    return lambda key_pos, query_pos, window: real(key_pos, query_pos, None if window is None else window + 1)


def dropped_bias(real):
    """Loader plan that loads every q/k/v bias as zeros (a missing bias)."""
    def twin(config, ours):
        plan = real(config, ours)
        for name, (srcs, combine) in plan.items():
            if name.endswith("_proj.bias"):
                plan[name] = (srcs, lambda ts, c=combine: torch.zeros_like(c(ts)))
        return plan
    return twin


def full_rotary(real):
    """Config reader that ignores partial_rotary_factor (RoPE over the whole head)."""
    return lambda c, params: 1.0


def router_not_renormalised(real):
    """Mixtral router that keeps the top-k softmax probabilities without renormalising them."""
    def twin(x, gate_weight, top_k):
        probs = torch.softmax(torch.nn.functional.linear(x, gate_weight), dim=-1, dtype=torch.float)
        weights, ids = torch.topk(probs, top_k, dim=-1)
        return weights.to(x.dtype), ids
    return twin


def qkv_split_swapped(real):
    """Phi-3 loader plan that takes k and v from each other's rows of the fused qkv tensor."""
    def twin(config, ours):
        plan = real(config, ours)
        for name in [n for n in plan if n.endswith("self_attn.k_proj.weight")]:
            v = name.replace("k_proj", "v_proj")
            plan[name], plan[v] = plan[v], plan[name]
        return plan
    return twin


def next_expert(real):
    """Fused MoE alignment that hands every block of tokens to the next expert's weights."""
    def twin(ids, n_experts, block_m=fused_moe.BLOCK_M):
        slots, experts = real(ids, n_experts, block_m)
        return slots, (experts + 1) % n_experts
    return twin


def long_factors_everywhere(real):
    """longrope tables that use the long factors at every position (the short ones ignored)."""
    def twin(config, seq_len, device=None):
        s = config.rope_scaling
        if s is not None and s.get("rope_type") == "longrope":
            config = config.replace(rope_scaling={**s, "short_factor": s["long_factor"]})
        return real(config, seq_len, device)
    return twin


# ------------------------------------------------------------------------ the checks

def rms_check():
    """test_kernels' RMSNorm check of the Triton face, bf16, three rows of 111."""
    kc.check_rms_norm("triton", (3,), 111, torch.bfloat16, _triton.run_device())


def attention_check():
    """test_flash_attention's check, bf16, causal, GQA 4/2, D 64, S 37."""
    ac.check_flash_attention(torch.bfloat16, True, (4, 2), 64, 37)


def hf_check(tmp_path):
    """test_hf_llama's fp32 logits check against transformers."""
    hf_cases.check_logits_fp32("mha_untied", tmp_path)


def hf_arch_check(case):
    """test_hf_llama's fp32 logits check on one of the other architectures (parity/hf_cases.py)."""
    def check(tmp_path):
        hf_cases.check_logits_fp32(case, tmp_path)
    check.needs_tmp = True
    return check


def fused_moe_check():
    """test_fused_moe's check, fp32, 37 tokens over 4 experts (Triton)."""
    moe_cases.check_fused_moe(37, 4, 64, 96, 2, torch.float32, _triton.run_device())


def paged_check():
    """test_paged_attention's gather-face check, block size 4."""
    paged_cases.check_gather_attention(block_size=4)


@pytest.fixture(scope="module")
def engine_case():
    """A tiny model, a prompt, and its greedy tokens (the reference without stops)."""
    model = engine_cases.make_tiny_model(seed=0)
    prompt = torch.randint(1, engine_cases.VOCAB, (9,), generator=torch.Generator().manual_seed(7)).tolist()
    return model, prompt, generate(model, prompt, 12).new_ids[0]


# name: (owner of the patched attribute, its name, fault, check, needs Triton)
CASES = {
    "rms_norm zeroed last column (Triton, bf16)": (rms, "rms_norm_triton", zeroed_last_column, rms_check, True),
    "rms_norm skipped row (Triton, bf16)": (rms, "rms_norm_triton", skipped_row, rms_check, True),
    "rms_norm wrong eps (Triton, bf16)": (rms, "rms_norm_triton", wrong_eps, rms_check, True),
    "RoPE halves swapped": (layers, "apply_rope", rope_halves_swapped, hf_check, False),
    "flash attention missing softmax scale": (fa, "flash_attention", missing_softmax_scale, attention_check, True),
    "paged KV write position off by one": (pa, "write_kv", kv_write_off_by_one, paged_check, False),
    "block table pointing at the wrong block": (pa, "gather_kv", wrong_block, paged_check, False),
    "engine ignores a stop token": (Scheduler, "update_from_output", stop_token_ignored, "engine", False),
    "decoder block drops the residual": (TransformerBlock, "forward_residual", dropped_residual, hf_check, False),
    "sliding window off by one (Mistral)": (masks, "visible_keys", window_off_by_one,
                                            hf_arch_check("mistral_window"), False),
    "q/k/v bias missing (Qwen2)": (arch, "checkpoint_plan", dropped_bias, hf_arch_check("qwen2_tied"), False),
    "partial rotary dim ignored (Phi-2)": (arch, "partial_rotary_factor", full_rotary, hf_arch_check("phi2"), False),
    "longrope short factors ignored (Phi-3)": (llama, "precompute_rope", long_factors_everywhere,
                                               hf_arch_check("phi3_longrope"), False),
    "fused qkv split k/v swapped (Phi-3)": (arch, "checkpoint_plan", qkv_split_swapped,
                                            hf_arch_check("phi3_fused"), False),
    "fused MoE tokens sent to the next expert (Triton)": (fused_moe, "align_by_expert", next_expert,
                                                          fused_moe_check, True),
    "MoE router weights not renormalised (Mixtral)": (moe, "route", router_not_renormalised,
                                                      hf_arch_check("mixtral_top2"), False),
}


def _params():
    return [pytest.param(name, marks=[needs_triton] if CASES[name][4] else [], id=name.replace(" ", "_"))
            for name in CASES]


@pytest.mark.parametrize("name", _params())
def test_planted_fault_is_rejected(name, monkeypatch, tmp_path, request):
    """The check passes on the real code, then fails with AssertionError on the faulty twin."""
    owner, attr, fault, check, _ = CASES[name]
    if check == "engine":
        model, prompt, ref = request.getfixturevalue("engine_case")
        check = lambda: engine_cases.check_stop_token(model, prompt, ref)  # noqa: E731
    elif check is hf_check or getattr(check, "needs_tmp", False):
        check = lambda c=check: c(tmp_path)  # noqa: E731
    check()  # the unmutated code passes
    monkeypatch.setattr(owner, attr, fault(getattr(owner, attr)))
    with pytest.raises(AssertionError) as caught:
        check()
    print(f"{name}: rejected: {str(caught.value).splitlines()[0][:200]}")


@needs_triton
def test_old_max_ref_score_missed_the_zeroed_column(monkeypatch):
    """Why the bound is per element: with the zeroed column, max|got - ref| / max|ref| stays under
    the old bf16 bound of 1e-2 (the x50 outliers set max|ref|), while the per-element check fails."""
    monkeypatch.setattr(rms, "rms_norm_triton", zeroed_last_column(rms.rms_norm_triton))
    got, ref = kc.run_rms_norm("triton", (3,), 111, torch.bfloat16, _triton.run_device())
    old_score = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert old_score <= 1e-2, old_score
    with pytest.raises(AssertionError, match="worst at"):
        rms_check()
