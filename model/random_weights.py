"""The one random-weights recipe: a Llama whose greedy output varies.

The usual N(0, 0.02) init with unit norms (and a tied lm_head) makes greedy decoding echo
the last token, so a broken engine could still "match" its reference. This recipe gives
O(1) activations and varied logits: norms U(0.5, 1.5), embeddings N(0, 0.1) (small, so a
tied lm_head does not echo the input), biases N(0, 0.1), every other matrix N(0, 1/fan_in). It serves the
embedded model, the parity tests and the benchmarks' presets.
"""

from __future__ import annotations

from typing import Union

import torch

from model.config import ModelConfig
from model.llama import Transformer


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """In place, from a generator seeded with `seed` on the weights' device: the recipe above."""
    params = list(model.named_parameters())
    g = torch.Generator(device=params[0][1].device).manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5, generator=g)
            elif "embed_tokens" in name or p.dim() == 1:  # embeddings; biases (Qwen2, Phi-2)
                p.normal_(0.0, 0.1, generator=g)
            else:  # (out, in) matrices and (experts, out, in) stacks: fan_in is the last dim
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
    return model


def random_model(config: Union[str, ModelConfig], device="cpu", dtype=torch.float32, seed: int = 0,
                 **overrides) -> Transformer:
    """A preset name (model.config.PRESETS) or ModelConfig with randomize_'s weights, eval mode.

    Built on the meta device, cast, then filled in place on `device`, so an 8B model never
    touches host memory nor exists in fp32. `overrides` replace config fields (n_layers=2).
    """
    config = (ModelConfig.from_name(config) if isinstance(config, str) else config).replace(**overrides)
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.tie_weights()  # to_empty gave lm_head and embed_tokens separate storage
    return randomize_(model, seed).eval()


def perturbed_copy(net: Transformer, scale: float, seed: int = 0) -> Transformer:
    """A copy of net with every weight times (1 + scale * N(0, 1)), seeded: a draft model that mostly
    agrees with net (the speculative tests' stand-in for a trained draft)."""
    import copy

    out = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
    return out
