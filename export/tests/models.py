"""The model every export test runs: one whose greedy output varies, so agreement means something.

The embedded model's 0.02 init echoes its last prompt token; this is the parity recipe
(model/embedded.py random_model(vary_norms=True): N(0, 1/fan_in) matrices, norms
U(0.5, 1.5)) on the embedded shape. Seed 2, because seeds 0 and 1 of this recipe still
repeat one or two ids for PROMPT; seed 2 gives 13 distinct ids in 16 greedy tokens.
"""

import torch

from export.checks import MIN_DISTINCT, distinct_tokens
from model.embedded import embedded_config, random_model

SEED = 2
PROMPT = [256, 72, 101, 108, 108, 111]  # BOS + "Hello" in the byte vocabulary


def varied_model() -> torch.nn.Module:
    """The embedded shape (4 layers, GQA 4/2, vocab 258) with varied-logit random weights, fp32 CPU."""
    return random_model(embedded_config(), vary_norms=True, seed=SEED)


def assert_varied(tokens: list[int]) -> None:
    """The reference is not degenerate: at least MIN_DISTINCT different greedy ids."""
    assert distinct_tokens(tokens) >= MIN_DISTINCT, f"degenerate reference {tokens}"
