"""bench.speculative on a CPU: a tiny run writes checked rows; a lossy strategy is WRONG and exits 1."""

import json

import pytest
import torch

from bench import speculative as bs
from data.spec_bench import TASKS
from decoding import speculative

# lab-draft drafting for itself (a separate copy): every proposal is accepted, and it is fast.
SMALL = bs.Options(checkpoint="lab-draft", draft_checkpoint="lab-draft", strategies=("draft", "ngram"), ks=("2",),
                   per_task=1, max_new_tokens=8, max_prompt_tokens=32, device="cpu", dtype="fp32")


def _random_heads(path, k=2):
    """Random Medusa heads for lab-draft in path (the shipped heads are lab-small's)."""
    import model
    from decoding.heads import MedusaHeads, save_heads

    net = model.load("lab-draft")
    heads = MedusaHeads(k, net.config.dim, net.config.vocab_size)
    torch.nn.init.normal_(heads.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    path.mkdir()
    save_heads(heads, str(path), "lab-draft")
    return str(path)


def test_cpu_run_writes_checked_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    heads = _random_heads(tmp_path / "heads")
    bs.run(bs.Options(**{**SMALL.__dict__, "strategies": ("draft", "ngram", "heads"), "heads_checkpoint": heads}))
    rows = json.loads((tmp_path / "speculative.json").read_text())["rows"]
    assert {(r["task"], r["strategy"]) for r in rows} == {
        (t, s) for t in (*TASKS, "all") for s in ("draft-k2", "ngram-k2", "heads-k2")}
    for r in rows:
        assert r["status"] == "ok" and r["tok_s"] > 0 and r["plain_tok_s"] > 0, r
        if r["strategy"] == "draft-k2":
            assert r["acceptance"] == 1.0 and r["tau"] > 2.0, r  # identical weights: all accepted
    names = {rec["name"] for rec in json.loads((tmp_path / "summary.json").read_text())}
    assert "speculative/all/draft-k2/speedup" in names
    assert (tmp_path / "speculative.png").stat().st_size > 0


def test_heads_that_do_not_fit_are_one_flag_error(tmp_path):
    from absl import app

    heads = _random_heads(tmp_path / "heads", k=2)
    with pytest.raises(app.UsageError, match="--heads_checkpoint: .*config.json: heads for hidden size 128"):
        bs.run(bs.Options(**{**SMALL.__dict__, "checkpoint": "lab-small", "strategies": ("heads",),
                             "heads_checkpoint": heads}))
    with pytest.raises(app.UsageError, match="k=4 exceeds the 2 heads"):
        bs.run(bs.Options(**{**SMALL.__dict__, "strategies": ("heads",), "ks": ("4",), "heads_checkpoint": heads}))


def test_a_lossy_strategy_is_wrong_and_exits_1(tmp_path, monkeypatch):
    """Planted: greedy verification accepts every proposal (never checks the target's argmax)."""
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(speculative, "verify_greedy", lambda logits, draft: (len(draft), int(logits[-1].argmax())))
    with pytest.raises(SystemExit) as e:
        bs.run(bs.Options(**{**SMALL.__dict__, "draft_checkpoint": "lab-small", "strategies": ("draft",)}))
    assert e.value.code == 1
    rows = json.loads((tmp_path / "speculative.json").read_text())["rows"]
    assert any(r["status"].startswith("WRONG") for r in rows)


def _tiny_cost_model(tmp_path):
    from model.config import ModelConfig

    opts = bs.Options(ks=("2", "4"), cost_context=48)
    prof = [{"task": "qa", "strategy": "draft-k4", "tau": 2.5, "draft_fwd_per_cycle": 3.5, "status": "ok"},
            {"task": "qa", "strategy": "ngram-k2", "tau": 1.5, "draft_fwd_per_cycle": 0.0, "status": "ok"},
            {"task": "qa", "strategy": "heads-k4", "tau": 1.8, "draft_fwd_per_cycle": 0.0, "status": "ok"},
            {"task": "qa", "strategy": "eagle-k4", "tau": 2.9, "draft_fwd_per_cycle": 4.0, "status": "ok"}]
    shapes = (("8b", ModelConfig.from_name("tiny")), ("1b-draft", ModelConfig.from_name("tiny").replace(n_layers=1)))
    return bs.cost_model(opts, prof, device="cpu", dtype=torch.float32, shapes=shapes)


def test_cost_model_checks_its_steps_and_projects_by_its_formula(tmp_path):
    """The GPU cost model's code on tiny CPU shapes: widths 1, 3, 5 checked and timed, the projection
    is tau * t1 / (tverify + d * tdraft + host)."""
    timing, proj, failures = _tiny_cost_model(tmp_path)
    assert not failures and {(r["model"], r["width"]) for r in timing} == {("8b", 1), ("8b", 3), ("8b", 5),
                                                                        ("1b-draft", 1)}
    assert all(r["status"] == "ok" and r["p50_us"] > 0 for r in timing)
    t = {(r["model"], r["width"]): r["p50_us"] for r in timing}
    draft = next(r for r in proj if r["strategy"] == "draft-k4")
    assert draft["projected_8b_speedup"] == pytest.approx(2.5 * t["8b", 1] / (t["8b", 5] + 3.5 * t["1b-draft", 1]))
    ngram = next(r for r in proj if r["strategy"] == "ngram-k2")
    assert ngram["host_us"] > 0 and ngram["projected_8b_speedup"] == pytest.approx(
        1.5 * t["8b", 1] / (t["8b", 3] + ngram["host_us"]))
    heads = next(r for r in proj if r["strategy"] == "heads-k4")  # host = the 8B-shape heads' proposal time
    assert heads["host_us"] > 0 and heads["host_us"] != ngram["host_us"] and heads["projected_8b_speedup"] == (
        pytest.approx(1.8 * t["8b", 1] / (t["8b", 5] + heads["host_us"])))
    eagle = next(r for r in proj if r["strategy"] == "eagle-k4")  # host = the 8B-shape EAGLE head's 4 steps
    assert eagle["host_us"] > 0 and eagle["host_us"] not in (heads["host_us"], ngram["host_us"])
    assert eagle["projected_8b_speedup"] == pytest.approx(2.9 * t["8b", 1] / (t["8b", 5] + eagle["host_us"]))
    # the graphed-head column is GPU only (a CPU has no CUDA graphs): absent here, never a made-up figure
    assert eagle["host_graphed_us"] is None and eagle["projected_graphed_head"] is None


def test_cost_model_rejects_a_wrong_verify_step(tmp_path, monkeypatch):
    """Planted: the (k+1)-wide step returns logits 10% off; its rows are WRONG, untimed, no projection."""
    from decoding import fast

    real = fast._DecodeStep._run
    monkeypatch.setattr(fast._DecodeStep, "_run", lambda self: real(self) * (1.1 if self.width > 1 else 1.0))
    timing, proj, failures = _tiny_cost_model(tmp_path)
    assert failures == ["cost_model/8b/w3", "cost_model/8b/w5"] and proj == []
    assert all(r["p50_us"] is None for r in timing if r["width"] > 1)


def test_divergence_gap_measures_how_far_below_the_argmax():
    import model

    net = model.load("lab-draft", dtype=torch.float32)
    prompt = [0, 40, 41, 42]
    with torch.no_grad():
        row = net(torch.tensor([prompt]))[0, -1]
    best, worst = int(row.argmax()), int(row.argmin())
    gap, at = bs.divergence_gap(net, prompt, [best], [worst])
    assert at == 0 and gap == 0.0  # the run's token is the argmax: a tie at worst
    gap, at = bs.divergence_gap(net, prompt, [worst], [best])
    assert gap == pytest.approx(float((row.max() - row.min()) / row.abs().max()), rel=1e-5) and gap > 0.5
    assert bs.divergence_gap(net, prompt, [best], [best, 3]) == (float("inf"), 1)  # a length difference


def test_engine_rows_are_checked_against_the_plain_engine(tmp_path, monkeypatch):
    """--engine_seqs: plain and n-gram rows through LLM; then a planted lossy engine verify is WRONG."""
    import scheduler.speculative as engine_spec

    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = bs.Options(**{**SMALL.__dict__, "max_new_tokens": 16, "engine_seqs": 3, "engine_rounds": 1})
    bs.run(opts)
    rows = json.loads((tmp_path / "speculative_engine.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["plain", "draft-k2", "ngram-k2"]
    assert all(r["status"] == "ok" and r["new_tokens"] == 6 * 16 and r["tok_s"] > 0 for r in rows), rows
    # lab-draft drafting for itself: its proposals are the target's argmax (a stale draft cache would not be)
    assert rows[1]["acceptance"] > 0.95 and rows[1]["steps"] < rows[0]["steps"], rows
    opts = bs.Options(**{**opts.__dict__, "strategies": ("ngram",)})
    monkeypatch.setattr(engine_spec, "verify_greedy", lambda logits, draft: (len(draft), int(logits[-1].argmax())))
    with pytest.raises(SystemExit) as e:
        bs.run(opts)
    assert e.value.code == 1
    rows = json.loads((tmp_path / "speculative_engine.json").read_text())["rows"]
    assert rows[1]["strategy"] == "ngram-k2" and rows[1]["status"].startswith("WRONG"), rows
