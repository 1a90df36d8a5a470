"""The models the export tests run: ones whose greedy output varies, so agreement means something.

The embedded model (model.load("embedded")): model/random_weights.py's recipe on the
embedded shape from seed 2, which gives 13 distinct ids in 16 greedy tokens for PROMPT
(seeds 0 and 1 of the recipe repeat one or two ids).
"""

import torch

import model
from export.checks import MIN_DISTINCT, distinct_tokens
from model.random_weights import random_model

PROMPT = [256, 72, 101, 108, 108, 111]  # BOS + "Hello" in the byte vocabulary


def varied_model() -> torch.nn.Module:
    """The embedded shape (4 layers, GQA 4/2, vocab 258) with varied-logit random weights, fp32 CPU."""
    return model.load("embedded")


def assert_varied(tokens: list[int]) -> None:
    """The reference is not degenerate: at least MIN_DISTINCT different greedy ids."""
    assert distinct_tokens(tokens) >= MIN_DISTINCT, f"degenerate reference {tokens}"


def trt_model(tie: bool = False, **overrides) -> torch.nn.Module:
    """A small model with the one random-weights recipe (model/random_weights.py) whose default shapes
    satisfy TensorRT-LLM's W8A16 layout at tp 1 and 2; overrides replace config fields."""
    cfg = dict(dim=128, intermediate_size=256, n_layers=2, vocab_size=301, tie_word_embeddings=tie)
    cfg.update(overrides)
    return random_model("tiny", seed=0, **cfg)
