"""bench.train_ablation on a CPU: every variant trains, is measured and written."""

import json

from bench import train_ablation as ablation
from bench.tests import options_without_flags


def test_cpu_ablation_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    ablation.run(ablation.Options(preset="micro", steps=6, seq_len=32, batch_size=4, device="cpu",
                                  variants=("fp32", "amp")))
    rows = json.loads((tmp_path / "train_ablation.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "amp"]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["tokens_per_step"] == 4 * 32
        assert r["final_heldout_loss"] < r["first_eval_loss"] + 1e-6  # learned (or at least did not diverge)
    assert rows[0]["speedup_vs_first"] == 1.0
    assert (tmp_path / "train_ablation.png").stat().st_size > 0


def test_every_option_is_a_flag():
    assert options_without_flags(ablation) == []
