"""The embedded default model: what `//model:generate` runs without --checkpoint.

A tiny Llama with a byte-level vocabulary (258 = 256 bytes + BOS + EOS), built
deterministically from a seed so every machine gets the same weights. Random
weights: the text it produces is not meaningful until a trained model is shipped.
"""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.llama import Transformer

EMBEDDED_SEED = 0


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
