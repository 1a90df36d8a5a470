"""Shared cases for the engine parity tests: a tiny random Llama with varied logits, random requests."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.llama import Transformer
from model.random_weights import randomize_
from scheduler import LLM, SamplingParams

VOCAB = 512


def make_tiny_model(seed: int = 0, **overrides) -> Transformer:
    """The "tiny" preset (4 layers, GQA 4/2, context 256), fp32, weights scaled so logits are
    far from uniform: the 0.02 init makes greedy decoding repeat one token, and a
    degenerate model would let a broken engine pass."""
    config = ModelConfig.from_name("tiny").replace(**overrides)
    torch.manual_seed(seed)
    model = randomize_(Transformer(config), seed)
    return model.eval()


def random_requests(n: int, seed: int, max_prompt: int = 40, max_new: int = 24,
                    vocab: int = VOCAB) -> list[tuple[list[int], int]]:
    """n (prompt ids, max_tokens) pairs with prompt length in [1, max_prompt], max_tokens in [1, max_new]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = int(torch.randint(1, max_prompt + 1, (1,), generator=g))
        m = int(torch.randint(1, max_new + 1, (1,), generator=g))
        out.append((torch.randint(1, vocab, (t,), generator=g).tolist(), m))
    return out


def check_stop_token(model, prompt: list[int], ref: list[int], block_size: int = 4) -> None:
    """Asserts the engine ends a request right after a stop token (kept in the output), given the
    request's greedy tokens `ref` without stops; the stop token is ref[3], which must not be last."""
    stop_tok = ref[3]
    cut = ref.index(stop_tok)
    assert cut < len(ref) - 1, "the stop token must come before the last token, or ignoring it would not show"
    llm = LLM(model, block_size=block_size, policy="chunked", num_blocks=128)
    try:
        out = llm.generate(prompt, SamplingParams(max_tokens=len(ref), stop_token_ids=[stop_tok]))[0]
    finally:
        llm.engine.runner.close()
    assert out.finish_reason == "stop" and out.token_ids == ref[:cut + 1], (
        f"stop token {stop_tok}: finished {out.finish_reason!r} with {out.token_ids}, want {ref[:cut + 1]}")


def scattered_tables(seq_lens, block_size, num_blocks, seed):
    """Block tables using a random permutation of blocks 1.. (block 0 is the null block)."""
    g = torch.Generator().manual_seed(seed)
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = []
    for n in seq_lens:
        k = -(-n // block_size)
        tables.append([perm.pop() for _ in range(k)])
    return tables

