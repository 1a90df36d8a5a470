"""Random weights that make a tiny Llama useful for parity tests.

The usual 0.02 init (and a tied lm_head) make greedy decoding repeat one token,
so a broken implementation could still "match". These weights give O(1)
activations and varied logits.
"""

from __future__ import annotations

import math

import torch


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """In place: norms U(0.5, 1.5), embeddings N(0, 0.1), other weights N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif "embed_tokens" in name:
                # Small, so a tied lm_head does not just echo the last input token.
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model
