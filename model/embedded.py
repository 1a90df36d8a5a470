"""The models that ship inside the workspace.

`lab-small` (models/lab-small, trained by train/, ~12.6M parameters) is what
`//model:generate` runs without --checkpoint; `lab-draft` is its speculative draft.
`build_embedded_model` is a tiny random Llama with a byte-level vocabulary
(258 = 256 bytes + BOS + EOS), built from a seed so every machine gets the same
weights: the fixture for tests and CPU benchmarks where only shapes matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

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


def embedded_config() -> ModelConfig:
    """The embedded model's shape: the tiny preset with a byte vocabulary (258) and tied embeddings."""
    return ModelConfig.from_name("tiny").replace(vocab_size=258, tie_word_embeddings=True)


def build_embedded_model() -> Transformer:
    """The default tiny model: byte-level vocab (258), seeded normal(0, 0.02) init, on CPU fp32."""
    torch.manual_seed(EMBEDDED_SEED)
    model = Transformer(embedded_config())
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        else:
            torch.nn.init.normal_(p, mean=0.0, std=0.02)
    return model.eval()


def random_model(name: Union[str, ModelConfig] = "llama3-8b", device="cpu", dtype=torch.float32, seed: int = 0,
                 vary_norms: bool = False, **overrides) -> Transformer:
    """A shape (config.py preset name, or a ModelConfig) with random weights made on `device`.

    Built on the meta device, cast, then filled in place, so an 8B model never touches host
    memory nor exists in fp32: embeddings N(0, 0.1), other matrices N(0, 1/fan_in) (O(1)
    activations, varied logits), norms 1, or U(0.5, 1.5) with vary_norms (parity's recipe:
    a tiny model then stops repeating tokens, so a broken engine cannot pass by luck).
    `overrides` replace config fields (n_layers=2 to shrink). For benchmarks that only need
    the shape; parity tests use parity.random_weights on the CPU.
    """
    config = (ModelConfig.from_name(name) if isinstance(name, str) else name).replace(**overrides)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.tie_weights()  # to_empty gave lm_head and embed_tokens separate storage
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.uniform_(0.5, 1.5, generator=g) if vary_norms else p.fill_(1.0)
            elif "embed_tokens" in pname:
                p.normal_(0.0, 0.1, generator=g)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
    return model.eval()
