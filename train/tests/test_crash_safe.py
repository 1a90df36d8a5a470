"""Training saves survive a crash: a save interrupted after its weights write (or between the swap's
renames) leaves a whole checkpoint that resumes to the straight run's exact loss; mixed steps are refused;
a fresh start never wipes a resumable run without --overwrite."""

import dataclasses
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.weights import CheckpointError
from train import checkpoint
from train.loop import TrainingError, make_optimizer, train
from train.tests.test_train import micro


class Crash(RuntimeError):
    pass


def test_crash_after_the_weights_write_resumes_to_the_straight_run(tmp_path, monkeypatch):
    cfg = dict(max_steps=12, save_every=4)
    whole = train(micro(tmp_path / "a", **cfg))
    real = checkpoint.save_file

    def crash_at_step_8(tensors, path, metadata=None):
        if metadata and metadata.get("step") == "8":  # the optimizer write, after the weights write
            raise Crash("killed")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", crash_at_step_8)
    with pytest.raises(Crash):
        train(micro(tmp_path / "b", **cfg))
    monkeypatch.setattr(checkpoint, "save_file", real)
    last = str(tmp_path / "b" / "run" / "last")
    assert checkpoint.read_state(last)["step"] == 4  # the previous save, whole
    resumed = train(dataclasses.replace(micro(tmp_path / "b", **cfg), resume=True))
    assert resumed["steps"] == 12
    assert resumed["final_heldout_loss"] == whole["final_heldout_loss"]
    assert resumed["final_train_loss"] == whole["final_train_loss"]


def test_crash_between_the_swap_renames_keeps_the_new_save(tmp_path, monkeypatch):
    path = str(tmp_path / "last")
    os.makedirs(path)
    (tmp_path / "last" / "v").write_text("old")

    def write(tmp):
        os.makedirs(tmp)
        with open(os.path.join(tmp, "v"), "w") as f:
            f.write("new")

    real, calls = os.rename, []

    def rename(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise Crash("killed between the renames")
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Crash):
        checkpoint.replace_dir(path, write)
    monkeypatch.setattr(os, "rename", real)
    assert not os.path.exists(path)
    checkpoint.settle(path)
    assert open(os.path.join(path, "v")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["last"]


def test_files_of_different_steps_are_refused(tmp_path):
    cfg = micro(tmp_path, max_steps=4, save_every=4)
    train(cfg)
    last = str(tmp_path / "run" / "last")
    opt = os.path.join(last, checkpoint.OPTIMIZER_FILE)
    save_file(load_file(opt), opt, metadata={"format": "pt", "step": "3"})  # planted: another step
    with pytest.raises(CheckpointError, match=r"step 4 but optimizer.safetensors holds step 3"):
        checkpoint.load_train_state(last, lambda m: make_optimizer(m, cfg), torch.device("cpu"))


def test_a_fresh_start_never_wipes_a_resumable_run(tmp_path):
    cfg = micro(tmp_path, max_steps=4, save_every=4)
    train(cfg)
    before = os.path.getmtime(tmp_path / "run" / "last" / checkpoint.STATE_FILE)
    with pytest.raises(TrainingError, match="--resume .* --overwrite"):
        train(cfg)
    assert os.path.getmtime(tmp_path / "run" / "last" / checkpoint.STATE_FILE) == before
    assert train(dataclasses.replace(cfg, overwrite=True))["steps"] == 4


def test_a_foreign_out_dir_is_refused_untouched(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="--out_dir .* not empty"):
        train(micro(tmp_path))
    assert os.listdir(tmp_path / "run") == ["thesis.tex"]
