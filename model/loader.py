"""model.load (defined here, exported by the model package): the one way every binary, benchmark
and export gets its model.

A source is one of
- a shipped model name: lab-small, lab-draft (models/, HF layout);
- `embedded`: the tiny random byte-vocabulary model (model/embedded.py);
- a config preset name (model.config.PRESETS: tiny, llama3-8b, ...): random weights;
- a ModelConfig: random weights;
- anything else: an HF-layout directory (config.json + safetensors). A relative path
  resolves against the folder the user ran the command in (BUILD_WORKING_DIRECTORY under
  `bazel run`). Names win over a same-named folder: write ./tiny for the folder.
Random weights follow model.random_weights; `seed` and config overrides (n_layers=2) apply
to them only.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from model.config import PRESETS, ConfigError, ModelConfig
from model.device import parse_dtype, resolve_device, resolve_dtype
from model.embedded import EMBEDDED, EMBEDDED_SEED, SHIPPED_MODELS, embedded_config, shipped_model_dir
from model.llama import Transformer
from model.random_weights import random_model
from model.weights import CheckpointError, load_model

NAMES = (*SHIPPED_MODELS, EMBEDDED)


def user_path(path: Union[str, os.PathLike]) -> str:
    """A path as the user typed it, made absolute against the folder they ran the command in."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isabs(path):
        return path
    return os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd(), path)


def checkpoint_dir(source: Union[str, os.PathLike, ModelConfig]) -> Optional[str]:
    """The HF-layout directory `source` names (shipped model or user path), or None for random weights.

    Raises CheckpointError when a path names no directory.
    """
    if isinstance(source, ModelConfig) or source == EMBEDDED or source in PRESETS:
        return None
    if source in SHIPPED_MODELS:
        return str(shipped_model_dir(source))
    path = user_path(source)
    if not os.path.isdir(path):
        what = ("checkpoint directory not found: " + path if os.sep in os.fspath(source)
                else f"unknown preset or model {os.fspath(source)!r} (and no such directory)")
        raise CheckpointError(f"{what}; expected an HF-layout directory, {', '.join(NAMES)}, or a preset "
                              f"({', '.join(sorted(PRESETS))})")
    return path


def random_config(source: Union[str, ModelConfig], **overrides) -> ModelConfig:
    """The config of a random-weights source (`embedded`, a preset name or a ModelConfig) with
    `overrides` applied; an override of None is ignored (a flag left unset). ConfigError if bad."""
    if isinstance(source, ModelConfig):
        config = source
    elif source == EMBEDDED:
        config = embedded_config()
    elif source in PRESETS:
        config = ModelConfig.from_name(source)
    else:
        raise ConfigError(f"unknown preset {source!r}; expected {EMBEDDED} or one of {', '.join(sorted(PRESETS))}")
    overrides = {k: v for k, v in overrides.items() if v is not None}  # ModelConfig checks their values
    try:
        return config.replace(**overrides)
    except TypeError as e:  # an unknown field name
        raise ConfigError(f"bad config override: {e}") from None


def load(source: Union[str, os.PathLike, ModelConfig] = "lab-small", dtype=None, device="cpu", *,
         seed: Optional[int] = None, **overrides) -> Transformer:
    """The model `source` names (see the module docstring), in eval mode on `device` in `dtype`.

    dtype: torch.dtype or a name (float32, bf16, ...); None keeps a checkpoint's own dtype
    (random weights: float32); "auto" is bfloat16 on a GPU, float32 on a CPU.
    device: cpu, cuda, cuda:N, auto, or a torch.device.
    seed: random weights only (default 0; `embedded` is seed EMBEDDED_SEED).
    overrides: ModelConfig fields for random weights only (n_layers=2, vocab_size=300).
    Raises CheckpointError / ConfigError / model.device.UsageError with a one-line reason.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device) if dtype == "auto" else (None if dtype is None else parse_dtype(dtype))
    path = checkpoint_dir(source)
    if path is not None:
        given = [k for k, v in overrides.items() if v is not None] + (["seed"] if seed is not None else [])
        if given:
            raise CheckpointError(f"{', '.join(given)} apply to random weights only, not to the checkpoint {source}")
        return load_model(path, device=device, dtype=dtype)
    if seed is None:
        seed = EMBEDDED_SEED if source == EMBEDDED else 0
    config = random_config(source, **overrides)
    return random_model(config, device=device, dtype=dtype or torch.float32, seed=seed)
