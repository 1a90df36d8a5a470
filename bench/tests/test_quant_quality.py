"""bench/quant_quality.py on lab-draft with tiny windows: rows, files, the fp32 gate and the claims.

(GPTQ is left out of the run: with a CI-sized calibration set, 2 windows of 128 tokens, its
Hessians are rank-deficient and it can lose to RTN; the claim logic is tested on its own.)"""

from __future__ import annotations

import json

from bench import quant_quality as qq


def test_rows_files_and_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = qq.Options(models=("lab-draft",), variants=("rtn_w4_g128", "smoothquant_w8a8", "spinquant_rtn_w4a4_kv4"),
                      window=128, max_windows=2, calib_samples=2, calib_len=128, device="cpu", rotate_steps=2)
    assert qq.run(opts) == 0
    rows = json.loads((tmp_path / "quant_quality.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"fp32", "rtn_w4_g128", "smoothquant_w8a8", "spinquant_rtn_w4a4_kv4"}
    spin = by["spinquant_rtn_w4a4_kv4"]
    assert spin["options"]["rotate_steps"] == 2 and spin["options"]["kv_bits"] == 4
    assert spin["calib_loss_end"] < spin["calib_loss_start"]  # Cayley SGD lowered the quantized loss
    assert by["fp32"]["wt2_kl"] < 1e-6 and by["fp32"]["wt2_top1"] == 1.0
    assert by["rtn_w4_g128"]["wt2_kl"] > 1e-4  # quantization is visible
    assert by["rtn_w4_g128"]["weight_MB"] < by["fp32"]["weight_MB"] / 3  # 4-bit codes + fp16 scales vs bf16
    assert by["smoothquant_w8a8"]["wt2_kl"] < by["rtn_w4_g128"]["wt2_kl"]  # W8A8 is the gentler one
    assert (tmp_path / "quant_quality.png").is_file() and (tmp_path / "summary.json").is_file()


def test_claim_fails_when_gptq_is_worse():
    rows = [{"model": "m", "variant": "gptq_w4_g128", "wt2_kl": 0.02, "wt2_ppl": 11.0},
            {"model": "m", "variant": "rtn_w4_g128", "wt2_kl": 0.01, "wt2_ppl": 10.0}]
    (claim,) = qq.check_claims(rows)
    assert not claim["ok"] and "gptq_w4_g128 beats rtn_w4_g128" in claim["claim"]


def test_spinquant_vs_quarot_is_reported_not_gated():
    rows = [{"model": "m", "variant": "spinquant_rtn_w4a4", "wt2_kl": 0.05, "wt2_ppl": 11.0},
            {"model": "m", "variant": "quarot_rtn_w4a4", "wt2_kl": 0.04, "wt2_ppl": 10.0}]
    assert qq.check_claims(rows) == []  # no gated claim pairs these two
    (c,) = qq.check_claims(rows, qq.COMPARISONS)
    assert not c["ok"] and "spinquant_rtn_w4a4 beats quarot_rtn_w4a4" in c["claim"]


def test_quantize_lm_head_rows(tmp_path, monkeypatch):
    """--quantize_lm_head: each quantized variant is scored again with its LM head quantized (lab-draft's tied
    head untied first); the head's extra rounding shows as more KL than the same variant with a float head."""
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = qq.Options(models=("lab-draft",), variants=("rtn_w4_g128",), window=128, max_windows=2,
                      calib_samples=2, calib_len=128, device="cpu", quantize_lm_head=True)
    assert qq.run(opts) == 0
    rows = json.loads((tmp_path / "quant_quality.json").read_text())
    by = {r["variant"]: r for r in (rows["rows"] if isinstance(rows, dict) else rows)}
    assert set(by) == {"fp32", "rtn_w4_g128", "rtn_w4_g128+lm_head"}
    assert by["rtn_w4_g128+lm_head"]["lm_head"] == "quantized" and by["rtn_w4_g128"]["lm_head"] == "float"
    assert by["rtn_w4_g128+lm_head"]["wt2_kl"] > by["rtn_w4_g128"]["wt2_kl"] > 1e-4


def test_rotated_gptq_variants_and_their_comparisons():
    # every label a claim or comparison names is a variant (a typo would silently drop the pair)
    assert {v for pair in qq.CLAIMS + qq.COMPARISONS for v in pair} <= set(qq.VARIANTS)
    assert qq.VARIANTS["spinquant_gptq_w4a4_kv4"] == ("gptq", dict(bits=4, group_size=-1, sym=True, act_bits=4,
                                                                   rotate="cayley", kv_bits=4))
    assert qq.VARIANTS["spinquant_gptq_w4_g128"] == ("gptq", dict(bits=4, group_size=128, rotate="cayley"))
    rows = [{"model": "m", "variant": "spinquant_gptq_w4a4", "wt2_kl": 0.03, "wt2_ppl": 10.0},
            {"model": "m", "variant": "spinquant_rtn_w4a4", "wt2_kl": 0.04, "wt2_ppl": 11.0}]
    (c,) = qq.check_claims(rows)  # gated: GPTQ beats RTN under the same rotation
    assert c["ok"] and "spinquant_gptq_w4a4 beats spinquant_rtn_w4a4" in c["claim"]
    rows[0]["wt2_kl"] = 0.05  # planted: GPTQ worse than RTN fails the gate
    assert not qq.check_claims(rows)[0]["ok"]
