"""bench/perplexity.py: uniform-ish for a random model, lower after training, windows disjoint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import perplexity as bpx
from bench.perplexity import perplexity
from bench.tests import options_without_flags
from model.config import ModelConfig
from model.llama import Transformer

REPO = Path(__file__).absolute().parents[2]  # not resolved: Bazel runfiles are symlinks


def random_model(vocab: int = 512) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny").replace(vocab_size=vocab, tie_word_embeddings=True))
    for name, p in model.named_parameters():
        torch.nn.init.ones_(p) if name.endswith("norm.weight") else torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def test_random_model_is_close_to_uniform_over_the_vocabulary():
    ids = torch.randint(0, 512, (2000,), generator=torch.Generator().manual_seed(1)).tolist()
    r = perplexity(random_model(512), ids, window=100, device="cpu")
    # Near-zero logits: NLL ~ log(512), i.e. perplexity ~ 512 (exp of the uniform entropy).
    assert abs(r["nll"] - math.log(512)) < 0.05, r
    assert 0.9 * 512 < r["perplexity"] < 1.1 * 512


class Recorder:
    """A stand-in model: uniform logits, remembers every input it saw."""

    def __init__(self, vocab: int):
        self.vocab, self.inputs = vocab, []

    def __call__(self, input_ids):
        self.inputs.append(input_ids.clone())
        return torch.zeros(*input_ids.shape, self.vocab)


def test_windows_do_not_overlap_and_tokens_scored_are_counted():
    ids = list(range(1000))  # every token distinct: overlaps would show
    rec = Recorder(1000)
    r = perplexity(rec, ids, window=64, device="cpu", batch_size=5)
    assert r["windows"] == 1000 // 64 == 15 and r["tokens_scored"] == 15 * 63
    seen = torch.cat([x.reshape(-1) for x in rec.inputs]).tolist()
    assert len(seen) == len(set(seen)) == 15 * 63  # each token is input at most once
    assert r["perplexity"] == pytest.approx(1000, rel=1e-5)
    rec = Recorder(1000)
    r = perplexity(rec, ids, window=64, device="cpu", bos_id=999, max_windows=3)
    assert r["tokens_scored"] == 3 * 64 and all(x[:, 0].eq(999).all() for x in rec.inputs)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(rec, ids[:10], window=64)


def test_training_a_few_steps_lowers_perplexity_and_the_cli_reports_the_protocol(tmp_path):
    from data import corpus
    from model.tokenizer import load_tokenizer
    from model.weights import load_model
    from train.loop import TrainConfig, train

    cfg = TrainConfig(preset="micro", tokenizer_dir=str(REPO / "data" / "tokenizer"), out_dir=str(tmp_path),
                      seq_len=32, batch_size=4, max_steps=20, lr=3e-3, warmup_steps=2, eval_every=10,
                      eval_tokens=512, save_every=20, device="cpu", progress=False, stop_at_step=1)
    train(cfg)
    ids = corpus.token_stream(load_tokenizer(str(REPO / "data" / "tokenizer")), "heldout")
    before = perplexity(load_model(str(tmp_path / "last")), ids, 32, "cpu", max_windows=40)
    train(TrainConfig(**{**cfg.__dict__, "stop_at_step": 0, "resume": True}))
    after = perplexity(load_model(str(tmp_path / "last")), ids, 32, "cpu", max_windows=40)
    assert after["perplexity"] < 0.7 * before["perplexity"], (before, after)

    out = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(REPO), LAB_RESULTS_DIR=str(out))
    run = subprocess.run([sys.executable, "-m", "bench.perplexity", f"--checkpoint={tmp_path / 'last'}",
                          "--window=32", "--max_windows=4", "--device=cpu"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "heldout: perplexity" in run.stdout and "4 non-overlapping windows of 32 tokens" in run.stdout
    records = json.loads((out / "summary.json").read_text())
    assert {r["name"] for r in records} == {"perplexity/last/heldout/w32", "perplexity/last/wikitext2_test/w32"}
    assert all(r["unit"] == "perplexity" and r["tokens_scored"] == 4 * 31 and "tokenizer=" in r["protocol"]
               for r in records)
    bad = subprocess.run([sys.executable, "-m", "bench.perplexity", f"--checkpoint={tmp_path / 'nope'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_nan_perplexity_exits_1_after_writing_results(tmp_path, monkeypatch, capsys):
    from bench import perplexity as bp

    real = bp.perplexity
    monkeypatch.setattr(bp, "perplexity", lambda *a, **k: {**real(*a, **k), "perplexity": math.nan})
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = bp.Options(checkpoint=str(REPO / "models" / "lab-draft"), tokenizer=None, splits=("heldout",), window=32,
                      batch_size=8, max_windows=2, bos=False, device="cpu", weights_dtype="float32")
    assert bp.run(opts) == 1  # main returns it, app.run exits with it
    assert "perplexity is not finite on heldout" in capsys.readouterr().err
    assert (tmp_path / "perplexity.json").exists()


@pytest.mark.parametrize("field,value,least", [("window", 1, 2), ("batch_size", 0, 1), ("max_windows", -1, 0)])
def test_bad_sizes_are_one_error_line_before_any_work(field, value, least, capsys):
    from bench import perplexity as bp

    opts = bp.Options(checkpoint=str(REPO / "models" / "lab-draft"), tokenizer=None, splits=("heldout",), window=32,
                      batch_size=8, max_windows=2, bos=False, device="cpu", weights_dtype="float32")
    assert bp.run(dataclasses.replace(opts, **{field: value})) == 2
    assert capsys.readouterr().err.strip() == f"error: --{field} must be at least {least}, got {value}"


def test_every_option_is_a_flag():
    assert options_without_flags(bpx) == []


def test_streaming_rows(tmp_path, monkeypatch, capsys):
    """--sinks adds the full-context, window-only and window+sinks rows over the same tokens."""
    from bench import perplexity as bp

    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    opts = bp.Options(checkpoint=str(REPO / "models" / "lab-draft"), tokenizer=None, splits=("heldout",), window=12,
                      batch_size=8, max_windows=0, bos=False, device="cpu", weights_dtype="float32", sinks=2,
                      stream_tokens=80)
    assert bp.run(opts) == 0
    rows = json.loads((tmp_path / "perplexity.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full context", "window only", "window + sinks"]
    assert rows[1]["tokens_scored"] == rows[2]["tokens_scored"] == 79
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    assert rows[1]["perplexity"] != rows[2]["perplexity"]  # the sinks change what is attended
