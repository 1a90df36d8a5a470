"""The models that ship inside the workspace.

`lab-small` (models/lab-small, trained by train/, ~12.6M parameters) is what
`//model:generate` runs without --checkpoint; `lab-draft` is its speculative draft.
`embedded` is a tiny random Llama with a byte-level vocabulary (258 = 256 bytes + BOS +
EOS): the tiny preset with model.random_weights' recipe from seed EMBEDDED_SEED, so every
machine gets the same weights and greedy decoding gives varied tokens. It is the fixture
for tests, exports and CPU benchmarks; build it with `model.load("embedded")`.
"""

from __future__ import annotations

from pathlib import Path

from model.config import ModelConfig

EMBEDDED = "embedded"
# The recipe's seed: from the exports' default prompt (BOS + 'Hello') seeds 0 and 1 loop on one or
# two tokens, seed 2 gives 13 distinct tokens in 16 greedy steps, so a parity check sees varied output.
EMBEDDED_SEED = 2
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
