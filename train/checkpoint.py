"""Training checkpoints without pickle: HF-layout weights + optimizer tensors + a JSON state.

A checkpoint folder is a Hugging Face model directory (model.weights.save_model:
config.json, safetensors shards under max_shard_bytes, tokenizer files) that also holds
  optimizer.safetensors  every AdamW state tensor, named "<param index>.<key>"
                         (exp_avg, exp_avg_sq, step), sharded like the weights
  trainer_state.json     step, tokens seen, wall time, best held-out loss, the
                         optimizer's param_groups (lr, betas, ...) and the run's flags.
transformers ignores the two extra files; `load_train_state` restores all three.

Crash safety: `replace_dir` writes a whole folder as <path>.saving, then swaps it in by two
renames (<path> -> <path>.replaced, <path>.saving -> <path>); `settle` finishes or undoes an
interrupted swap, so <path> is always one complete save. Every safetensors file also carries
the step in its header and `load_train_state` refuses a folder whose files disagree.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.weights import CheckpointError, load_model, save_model, split_shards

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"  # or optimizer-0000i-of-0000n.safetensors
SAVING, REPLACED = ".saving", ".replaced"  # suffixes of the sibling folders of a swap


def settle(path: str) -> None:
    """Finish or undo a replace_dir that a crash interrupted, leaving <path> one whole save (or absent).

    The old folder is renamed away only after the new one is complete, so when <path> is missing
    and <path>.replaced exists, <path>.saving (if there) is complete and wins.
    """
    saving, replaced = path + SAVING, path + REPLACED
    if not os.path.isdir(path) and os.path.isdir(replaced):
        os.rename(saving if os.path.isdir(saving) else replaced, path)
    for leftover in (saving, replaced):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)


def _fsync_tree(path: str) -> None:
    """Flush every file under path to disk, so a rename never publishes unwritten data."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def replace_dir(path: str, write: Callable[[str], None]) -> None:
    """Replace folder `path` by what write(tmp) puts into a new folder tmp, atomically (see docstring)."""
    settle(path)
    tmp = path + SAVING
    write(tmp)
    _fsync_tree(tmp)
    if os.path.isdir(path):
        os.rename(path, path + REPLACED)
    os.rename(tmp, path)
    settle(path)  # removes <path>.replaced


def write_train_state(path: str, model, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                      max_shard_bytes: Optional[int] = None) -> None:
    """Write model weights, optimizer tensors and `state` (JSON-able, with "step") into new folder `path`.

    Not atomic by itself: save_train_state (or replace_dir) wraps it.
    """
    meta = {"step": str(state["step"])}
    save_model(model, path, max_shard_bytes=max_shard_bytes, metadata=meta)
    opt = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.detach().contiguous().cpu()
               for idx, per_param in opt["state"].items() for key, value in per_param.items()
               if torch.is_tensor(value)}
    shards = split_shards(tensors, max_shard_bytes)
    files = []
    for i, shard in enumerate(shards, 1):
        fname = OPTIMIZER_FILE if len(shards) == 1 else f"optimizer-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata={"format": "pt", **meta})
        files.append(fname)
    record = dict(state, optimizer_files=files, param_groups=opt["param_groups"])
    with open(os.path.join(path, STATE_FILE), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")


def save_train_state(path: str, model, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     max_shard_bytes: Optional[int] = None) -> None:
    """write_train_state into `path`, atomically: a crash leaves the previous save or this one, whole."""
    replace_dir(path, lambda tmp: write_train_state(tmp, model, optimizer, state, max_shard_bytes))


def read_state(path: str) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder, or a one-line error saying what is missing."""
    settle(path)
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"no {STATE_FILE} in {path}; nothing to resume (drop --resume to start fresh)")
    with open(state_path) as f:
        return json.load(f)


def check_steps(path: str, state: dict[str, Any]) -> None:
    """Raise CheckpointError unless every safetensors file in path records state's step.

    Files without a step (saved before steps were recorded) pass only when none has one.
    """
    steps = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), framework="pt") as f:
                steps[name] = (f.metadata() or {}).get("step")
    if all(s is None for s in steps.values()):
        return
    want = str(state["step"])
    bad = {name: s for name, s in steps.items() if s != want}
    if bad:
        name, got = next(iter(bad.items()))
        raise CheckpointError(f"checkpoint {path} is inconsistent: {STATE_FILE} is at step {want} but {name} "
                              f"holds step {got} ({len(bad)} file(s) disagree); a save was interrupted or "
                              "files were mixed: resume from another checkpoint or start fresh")


def load_train_state(path: str, optimizer_factory, device) -> tuple[Any, torch.optim.Optimizer, dict]:
    """Return (model fp32 on device, optimizer with its saved state, trainer state dict).

    optimizer_factory(model) builds a fresh optimizer with the same param groups; its
    state is then replaced by the saved tensors. Raises CheckpointError when the files'
    steps disagree (check_steps).
    """
    state = read_state(path)
    check_steps(path, state)
    model = load_model(path, device=device, dtype=torch.float32).train()
    optimizer = optimizer_factory(model)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for fname in state["optimizer_files"]:
        with safe_open(os.path.join(path, fname), framework="pt", device="cpu") as f:
            for name in f.keys():
                idx, key = name.split(".", 1)
                opt_state.setdefault(int(idx), {})[key] = f.get_tensor(name)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return model, optimizer, state
