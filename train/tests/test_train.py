"""train/train.py on CPU with the micro preset: learning, resume, NaN stop, HF-loadable output."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import checkpoint
from train.loop import TrainConfig, TrainingError, lr_at, train

REPO = Path(__file__).absolute().parents[2]  # not resolved: Bazel runfiles are symlinks


def micro(tmp_path, **changes) -> TrainConfig:
    base = TrainConfig(preset="micro", tokenizer_dir=str(REPO / "data" / "tokenizer"),
                       out_dir=str(tmp_path / "run"), seq_len=32, batch_size=4, max_steps=12,
                       lr=3e-3, warmup_steps=2, eval_every=6, eval_tokens=1024, save_every=6,
                       device="cpu", progress=False, log_every=3)
    return dataclasses.replace(base, **changes)


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_a_few_steps_reduce_the_loss(tmp_path):
    s = train(micro(tmp_path, max_steps=24, eval_every=8))
    losses = [e["heldout_loss"] for e in s["evals"]]
    assert losses[-1] < losses[0] - 0.3, losses
    assert s["steps"] == 24 and s["tokens_seen"] == 24 * 4 * 32
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    for needle in ("tokens seen: 3,072", "held-out loss", "perplexity", "Tiny Shakespeare", "device: cpu"):
        assert needle in card


def test_resume_continues_from_the_same_step_with_the_same_state(tmp_path):
    whole = train(micro(tmp_path / "a", grad_accum=2))
    first = train(micro(tmp_path / "b", grad_accum=2, stop_at_step=5))
    assert first["steps"] == 5
    last = str(tmp_path / "b" / "run" / "last")
    saved_opt = {}
    from safetensors.torch import load_file
    for f in json.loads(Path(last, checkpoint.STATE_FILE).read_text())["optimizer_files"]:
        saved_opt.update(load_file(os.path.join(last, f)))
    cfg = micro(tmp_path / "b", grad_accum=2)
    from train.loop import make_optimizer
    _, opt, state = checkpoint.load_train_state(last, lambda m: make_optimizer(m, cfg), "cpu")
    assert state["step"] == 5
    loaded = {f"{i}.{k}": v for i, st in opt.state_dict()["state"].items() for k, v in st.items()}
    assert loaded.keys() == saved_opt.keys()
    for k in saved_opt:
        assert torch.equal(loaded[k].cpu(), saved_opt[k]), k
    assert float(loaded["0.step"]) == 5

    resumed = train(dataclasses.replace(cfg, resume=True))
    assert resumed["steps"] == whole["steps"] == 12
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    from model.weights import load_model
    a = load_model(str(tmp_path / "a" / "run" / "last")).state_dict()
    b = load_model(str(tmp_path / "b" / "run" / "last")).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["final_heldout_loss"] == whole["final_heldout_loss"]


def test_nan_stops_with_the_step_named(tmp_path):
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at step 3"):
        train(micro(tmp_path, inject_nan_step=3))


def test_checkpoint_is_sharded_and_loads_in_ours_and_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    train(micro(tmp_path, max_steps=3, max_shard_mb=0.3))
    last = tmp_path / "run" / "last"
    shards = sorted(p.name for p in last.glob("model-*.safetensors"))
    # The 1 MiB embedding alone exceeds 0.3 MiB, so it gets a shard of its own.
    assert len(shards) == 2 and (last / "model.safetensors.index.json").is_file()
    assert len(list(last.glob("optimizer-*.safetensors"))) >= 2
    assert not list(last.glob("*.bin")) and not list(last.glob("*.pt"))
    from model.tokenizer import load_tokenizer
    from model.weights import load_model
    ours = load_model(str(last))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(last), dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(str(last)).encode("ROMEO: what light", bos=False)])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(last))
    assert hf_tok("ROMEO")["input_ids"] == load_tokenizer(str(last)).encode("ROMEO", bos=True)


def test_amp_and_activation_checkpointing_run_on_cpu(tmp_path):
    s = train(micro(tmp_path, max_steps=3, amp=True, checkpoint_activations=True, grad_accum=2))
    assert s["steps"] == 3 and s["final_heldout_loss"] == s["final_heldout_loss"]  # finite, not NaN


def test_binary_runs_as_module_and_reports_errors_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run([sys.executable, "-m", "train.train", "--preset=micro", "--max_steps=2",
                         "--seq_len=16", "--batch_size=2", "--eval_tokens=256", "--device=cpu",
                         f"--out_dir={tmp_path / 'cli'}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "done: 2 steps" in ok.stdout and (tmp_path / "cli" / "MODEL_CARD.md").is_file()
    bad = subprocess.run([sys.executable, "-m", "train.train", "--preset=nope", "--device=cpu",
                          f"--out_dir={tmp_path / 'bad'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown preset 'nope'")
