"""bench.quant_decode's whole-decode-step table on a CPU (eager, a tiny Llama-3-shaped model): every
variant CPU torch can run is checked against its dequantized reference; a planted fault is WRONG."""

import torch

import quant.fast_linear as fl
from bench import quant_decode as qd
from model.config import ModelConfig

# Llama-3 vocabulary and RoPE, widths that are multiples of the 128 group; 2 layers keep it fast.
TINY = ModelConfig.from_name("llama3-8b").replace(dim=256, n_layers=2, intermediate_size=512, n_heads=2,
                                                  n_kv_heads=1, vocab_size=512)
# torch's tinygemm int4pack is CUDA-only. The Triton layers run through TRITON_INTERPRET=1 (BUILD env)
# at batch 1 only: the interpreter cannot run the batch > 1 path's bf16 tl.dot (numpy has no bf16; the
# GPU target of kernels/tests/test_quant_gemv.py covers it).
TORCH_VARIANTS = ["bf16", "w8a8_int8_int_mm", "fp8_w8a8_rowwise_scaled_mm"]
TRITON_VARIANTS = ["w4a16_g128_triton", "w8a16_triton"]


def check_rows(rows, failures, variants, batches):
    assert failures == [], rows
    assert {(r["variant"], r["batch"]) for r in rows} == {(v, b) for v in variants for b in batches}
    for r in rows:
        assert r["status"] == "ok" and r["tok_s"] > 0 and r["GB_read"] > 0, r
        assert r["logit_err"] <= qd.band_for(r["variant"]), r
    return {(r["variant"], r["batch"]): r for r in rows}


def test_cpu_decode_rows_are_checked_and_timed():
    rows, failures = qd.decode_rows(TORCH_VARIANTS, [1, 2], 8, TINY, "cpu", 1, None, warmup=0)
    check_rows(rows, failures, TORCH_VARIANTS, (1, 2))


def test_cpu_triton_decode_rows_and_bytes():
    by = check_rows(*qd.decode_rows(TRITON_VARIANTS + ["bf16"], [1], 4, TINY, "cpu", 1, None, warmup=0),
                    TRITON_VARIANTS + ["bf16"], (1,))
    # bytes read: W4 g128 (0.5 B + fp16 scale/zero per 128) < W8 (1 B) < bf16 (2 B) for the quantized layers
    assert by[("w4a16_g128_triton", 1)]["GB_read"] < by[("w8a16_triton", 1)]["GB_read"] < by[("bf16", 1)]["GB_read"]


def test_cpu_w4_lm_head_row():
    """The W4 variant with the LM head quantized too (quant.quantize(lm_head=True)): its options do quantize
    the head (and W4 without them does not), and its decode row is checked against its own dequantized reference."""
    from model.random_weights import random_model
    from quant import quantize
    from quant.qlinear import QuantLinear

    _, opts, _ = qd.DECODE_VARIANTS["w4a16_g128_triton_lm_head_q"]
    for o, want in ((opts, True), (qd.W4_OPTS, False)):
        net = random_model(TINY, device="cpu", dtype=torch.bfloat16, seed=0, max_seq_len=16)
        quantize(net, "rtn", **o)
        assert isinstance(net.lm_head, QuantLinear) == want, (o, type(net.lm_head))
    rows, failures = qd.decode_rows(["w4a16_g128_triton_lm_head_q"], [1], 4, TINY, "cpu", 1, None, warmup=0)
    check_rows(rows, failures, ["w4a16_g128_triton_lm_head_q"], (1,))


def test_planted_wrong_group_is_wrong(monkeypatch):
    """Planted: the W4 layers read the scales and zeros of the next group (an off-by-one group index)."""
    orig = fl.W4A16Linear.__init__

    def shifted(self, mod, name="layer", gemv_layout=None):
        orig(self, mod, name, gemv_layout)
        g = 1 if self.gemv_layout else 0  # the group axis: (out, G) in the GEMV layout, (G, out) in GPTQ's
        self.scales.copy_(self.scales.roll(1, g))
        self.zeros.copy_(self.zeros.roll(1, g))

    monkeypatch.setattr(fl.W4A16Linear, "__init__", shifted)
    rows, failures = qd.decode_rows(["w4a16_g128_triton"], [1], 4, TINY, "cpu", 1, None, warmup=0)
    assert failures == ["decode/w4a16_g128_triton/b1"] and rows[0]["status"].startswith("WRONG"), rows
    assert rows[0]["logit_err"] > 4 * qd.band_for("w4a16_g128_triton")


def test_cpu_8bit_weight_only_and_quantized_lm_head_rows():
    """FP8 weight-only (kernels/gemv8.py under the interpreter) and the `_lm_head_q` rows: checked like the
    others, timed at batch 1 only (BATCH1_DECODE drops batch 2), and a quantized LM head reads fewer bytes."""
    names = ["fp8_weight_only_triton", "w8a16_triton_lm_head_q", "fp8_weight_only_triton_lm_head_q"]
    by = check_rows(*qd.decode_rows(names, [1, 2], 4, TINY, "cpu", 1, None, warmup=0), names, (1,))
    # same decoder bytes (1 B + fp32 row scale per weight); the LM head 1 B instead of 2 B per weight
    assert by[("fp8_weight_only_triton_lm_head_q", 1)]["GB_read"] < by[("fp8_weight_only_triton", 1)]["GB_read"]
    assert by[("w8a16_triton_lm_head_q", 1)]["GB_read"] < by[("fp8_weight_only_triton", 1)]["GB_read"]


def test_planted_fp8_weight_only_scale_is_wrong(monkeypatch):
    """Planted: the FP8 weight-only layers read the neighbouring row's scale."""
    orig = fl.FP8WeightOnlyLinear.__init__

    def shifted(self, mod, name="layer"):
        orig(self, mod, name)
        self.weight_scale.copy_(self.weight_scale.roll(1))

    monkeypatch.setattr(fl.FP8WeightOnlyLinear, "__init__", shifted)
    rows, failures = qd.decode_rows(["fp8_weight_only_triton"], [1], 4, TINY, "cpu", 1, None, warmup=0)
    assert failures == ["decode/fp8_weight_only_triton/b1"] and rows[0]["status"].startswith("WRONG"), rows
