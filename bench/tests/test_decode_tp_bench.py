"""bench.decode --tp 1,2 on a CPU: the tensor-parallel rows (2 gloo ranks, the fused path) are checked
against the reference like every variant and match it exactly in fp32."""

import json

from bench import decode as bd

# The tiny preset in fp32 on 8-token prompts, 6 new tokens, the fused variant at batch 2, TP 1 and 2.
SMALL = bd.Options(preset=None, n_layers=None, dtype=None, device="cpu", prompt_len=8, new_tokens=6,
                   batch_sizes=("2",), variants=("fused",), eager_batch_sizes=("1", "16"), compile_batch_sizes=("1",),
                   compile_mode="max-autotune-no-cudagraphs", coordinate_descent=True, seed=0, tp=("1", "2"))


def test_cpu_tp2_rows_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bd.run(SMALL)
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert {(r["variant"], r["tp"]) for r in rows} == {("fused", 1), ("fused_tp2", 2)}
    for r in rows:
        assert r["status"] == "ok" and r["agreement"] == 1.0 and r["tok_s"] > 0, r  # fp32: exact
    tp2 = next(r for r in rows if r["tp"] == 2)
    assert tp2["speedup_vs_tp1"] > 0
