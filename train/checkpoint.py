"""Training checkpoints without pickle: HF-layout weights + optimizer tensors + a JSON state.

A checkpoint folder is a Hugging Face model directory (model.weights.save_model:
config.json, safetensors shards under max_shard_bytes, tokenizer files) that also holds
  optimizer.safetensors  every AdamW state tensor, named "<param index>.<key>"
                         (exp_avg, exp_avg_sq, step), sharded like the weights
  trainer_state.json     step, tokens seen, wall time, best held-out loss, the
                         optimizer's param_groups (lr, betas, ...) and the run's flags.
transformers ignores the two extra files; `load_train_state` restores all three.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.weights import load_model, save_model, split_shards

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"  # or optimizer-0000i-of-0000n.safetensors


def save_train_state(path: str, model, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     max_shard_bytes: Optional[int] = None) -> None:
    """Write model weights, optimizer tensors and `state` (JSON-able) into `path`."""
    os.makedirs(path, exist_ok=True)
    save_model(model, path, max_shard_bytes=max_shard_bytes)
    opt = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.detach().contiguous().cpu()
               for idx, per_param in opt["state"].items() for key, value in per_param.items()
               if torch.is_tensor(value)}
    for name in os.listdir(path):  # drop shards of an earlier, differently sharded save
        if name.startswith("optimizer") and name.endswith(".safetensors"):
            os.remove(os.path.join(path, name))
    shards = split_shards(tensors, max_shard_bytes)
    files = []
    for i, shard in enumerate(shards, 1):
        fname = OPTIMIZER_FILE if len(shards) == 1 else f"optimizer-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
        files.append(fname)
    record = dict(state, optimizer_files=files, param_groups=opt["param_groups"])
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(path, STATE_FILE))  # written last: its presence marks a whole save


def read_state(path: str) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder, or a one-line error saying what is missing."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"no {STATE_FILE} in {path}; nothing to resume (drop --resume to start fresh)")
    with open(state_path) as f:
        return json.load(f)


def load_train_state(path: str, optimizer_factory, device) -> tuple[Any, torch.optim.Optimizer, dict]:
    """Return (model fp32 on device, optimizer with its saved state, trainer state dict).

    optimizer_factory(model) builds a fresh optimizer with the same param groups; its
    state is then replaced by the saved tensors.
    """
    state = read_state(path)
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
