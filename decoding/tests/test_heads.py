"""Medusa heads (decoding/heads.py, train/heads.py): files that do not fit the target are one clear error
naming the file; the hidden-state tap holds what lm_head saw; a short training run beats untrained heads."""

from __future__ import annotations

import json
import os

import pytest
import torch

from decoding.heads import CONFIG, WEIGHTS, HeadsError, HiddenTap, MedusaHeads, load_heads, save_heads
from model.random_weights import random_model


@pytest.fixture
def target():
    return random_model("tiny", vocab_size=64, seed=3)


def _saved(tmp_path, k, dim, vocab):
    heads = MedusaHeads(k, dim, vocab)
    torch.nn.init.normal_(heads.weight, std=0.1)
    save_heads(heads, str(tmp_path), "test")
    return heads


def test_round_trip(tmp_path, target):
    heads = _saved(tmp_path, 3, target.config.dim, 64)
    got = load_heads(str(tmp_path), target)
    assert torch.equal(got.weight, heads.weight) and got.num_heads == 3 and not got.weight.requires_grad


def test_wrong_vocab_or_hidden_size_is_one_error_naming_the_file(tmp_path, target):
    _saved(tmp_path, 2, target.config.dim, 65)
    cfg = os.path.join(str(tmp_path), CONFIG)
    with pytest.raises(HeadsError, match=f"{cfg}: heads for a vocabulary of 65 ids, the target has 64"):
        load_heads(str(tmp_path), target)
    _saved(tmp_path, 2, target.config.dim + 8, 64)
    with pytest.raises(HeadsError, match=f"{cfg}: heads for hidden size {target.config.dim + 8}"):
        load_heads(str(tmp_path), target)
    # config and tensors disagree (a hand-edited config): the weights file is named
    _saved(tmp_path, 2, target.config.dim, 64)
    with open(cfg) as f:
        c = json.load(f)
    with open(cfg, "w") as f:
        json.dump({**c, "num_heads": 3}, f)
    with pytest.raises(HeadsError, match=f"{os.path.join(str(tmp_path), WEIGHTS)}: tensors"):
        load_heads(str(tmp_path), target)
    with pytest.raises(HeadsError, match="heads directory not found"):
        load_heads(str(tmp_path / "nope"), target)
    with open(cfg, "w") as f:
        f.write("{")
    with pytest.raises(HeadsError, match=f"{cfg}: not a heads config"):
        load_heads(str(tmp_path), target)


def test_tap_holds_the_hidden_state_lm_head_saw(target):
    seen = []
    target.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0][0].clone()))
    tap = HiddenTap(target, 4)
    with torch.no_grad():
        target(torch.tensor([[5, 9, 2, 33, 7, 1]]))
    assert torch.equal(tap.row(6, 5), seen[-1][5]) and torch.equal(tap.row(6, 2), seen[-1][2])
    with pytest.raises(IndexError):
        tap.row(6, 1)  # only the last 4 rows are kept
    tap.remove()
    heads = MedusaHeads(2, target.config.dim, 64)
    # zero-initialised heads are lm_head itself (Medusa's init): head logits == the model's logits
    assert torch.allclose(heads.logits(seen[-1], target.lm_head)[:, 0], target.lm_head(seen[-1]), atol=1e-6)


def test_short_training_run_beats_untrained_heads(tmp_path):
    """train.heads on lab-draft for a few CPU seconds: head 0 agrees with the base more than at W = 0,
    and the folder loads."""
    import model
    from train.heads import train_heads

    opts = {"checkpoint": "lab-draft", "num_heads": 2, "seq_len": 32, "batch_size": 4, "max_steps": 40,
            "max_minutes": 0.0, "lr": 3e-3, "warmup_steps": 5, "weight_decay": 0.0, "eval_tokens": 2048,
            "out_dir": str(tmp_path / "h"), "overwrite": False, "seed": 0, "device": "cpu"}
    s = train_heads(opts)
    before, after = s["heldout_before"], s["heldout_after"]
    assert after["head_top1_vs_base_argmax"][0] > before["head_top1_vs_base_argmax"][0] + 0.05, s
    assert "| 0 | t + 2 |" in (tmp_path / "h" / "MODEL_CARD.md").read_text()
    load_heads(str(tmp_path / "h"), model.load("lab-draft"))
