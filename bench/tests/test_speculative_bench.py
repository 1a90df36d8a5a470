"""bench.speculative on a CPU: a tiny run writes checked rows; a lossy strategy is WRONG and exits 1."""

import json

import pytest

from bench import speculative as bs
from data.spec_bench import TASKS
from decoding import speculative

# lab-draft drafting for itself (a separate copy): every proposal is accepted, and it is fast.
SMALL = bs.Options(checkpoint="lab-draft", draft_checkpoint="lab-draft", strategies=("draft", "ngram"), ks=("2",),
                   per_task=1, max_new_tokens=8, max_prompt_tokens=32, device="cpu", dtype="fp32")


def test_cpu_run_writes_checked_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    bs.run(SMALL)
    rows = json.loads((tmp_path / "speculative.json").read_text())["rows"]
    assert {(r["task"], r["strategy"]) for r in rows} == {
        (t, s) for t in (*TASKS, "all") for s in ("draft-k2", "ngram-k2")}
    for r in rows:
        assert r["status"] == "ok" and r["tok_s"] > 0 and r["plain_tok_s"] > 0, r
        if r["strategy"] == "draft-k2":
            assert r["acceptance"] == 1.0 and r["tau"] > 2.0, r  # identical weights: all accepted
    names = {rec["name"] for rec in json.loads((tmp_path / "summary.json").read_text())}
    assert "speculative/all/draft-k2/speedup" in names
    assert (tmp_path / "speculative.png").stat().st_size > 0


def test_a_lossy_strategy_is_wrong_and_exits_1(tmp_path, monkeypatch):
    """Planted: greedy verification accepts every proposal (never checks the target's argmax)."""
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(speculative, "verify_greedy", lambda logits, draft: (len(draft), int(logits[-1].argmax())))
    with pytest.raises(SystemExit) as e:
        bs.run(bs.Options(**{**SMALL.__dict__, "draft_checkpoint": "lab-small", "strategies": ("draft",)}))
    assert e.value.code == 1
    rows = json.loads((tmp_path / "speculative.json").read_text())["rows"]
    assert any(r["status"].startswith("WRONG") for r in rows)
