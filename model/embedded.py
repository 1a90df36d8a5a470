"""The models that ship inside the workspace.

`lab-small` (models/lab-small, trained by train/, ~12.6M parameters) is what
`//model:generate` runs without --checkpoint; `lab-draft` is its speculative draft.
`build_embedded_model` is a tiny random Llama with a byte-level vocabulary
(258 = 256 bytes + BOS + EOS), built from a seed so every machine gets the same
weights: the fixture for tests and CPU benchmarks where only shapes matter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import ModelConfig
from model.llama import Transformer

EMBEDDED_SEED = 0
SHIPPED_MODELS = ("lab-small", "lab-draft")


def shipped_model_dir(name: str = "lab-small") -> Path:
    """Folder of a model shipped in models/ (HF layout); works from the repo and Bazel runfiles."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped model {name!r}; choose one of {SHIPPED_MODELS}")
    path = Path(__file__).resolve().parents[1] / "models" / name
    if not (path / "config.json").is_file():  # under Bazel, model/ may be a symlink into the source tree
        path = Path(__file__).absolute().parents[1] / "models" / name
    return path


def build_embedded_model() -> Transformer:
    """The default tiny model: byte-level vocab (258), seeded normal(0, 0.02) init, on CPU fp32."""
    config = ModelConfig.from_name("tiny").replace(vocab_size=258, tie_word_embeddings=True)
    torch.manual_seed(EMBEDDED_SEED)
    model = Transformer(config)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        else:
            torch.nn.init.normal_(p, mean=0.0, std=0.02)
    return model.eval()
