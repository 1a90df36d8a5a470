"""train.distill: a few steps of KL to lab-small lower lab-draft's held-out KL; the output loads as a model."""

import torch

import model
from train.distill import distill, distill_loss


def test_distill_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    assert float(distill_loss(a, a)) < 1e-6 and float(distill_loss(a, a.flip(-1))) > 0.1


def test_a_short_run_moves_the_draft_toward_the_teacher(tmp_path):
    opts = {"teacher": "lab-small", "student": "lab-draft", "seq_len": 32, "batch_size": 4, "max_steps": 30,
            "max_minutes": 0.0, "lr": 1e-3, "warmup_steps": 3, "eval_tokens": 1024,
            "out_dir": str(tmp_path / "d"), "overwrite": False, "seed": 0, "device": "cpu"}
    s = distill(opts)
    assert s["heldout_after"]["kl_to_teacher"] < s["heldout_before"]["kl_to_teacher"] - 0.02, s
    net = model.load(str(tmp_path / "d"))
    assert net.config.dim == 128 and "distilled from `lab-small`" in (tmp_path / "d" / "MODEL_CARD.md").read_text()
