"""FastGenerator (fused projections, long-lived cache) gives generate()'s greedy tokens."""

import pytest
import torch

from decoding.fast import FastGenerator
from decoding.generate import ContextLengthError, generate
from model.config import ModelConfig
from model.llama import Transformer
from model.random_weights import randomize_


def _model(seed):
    torch.manual_seed(seed)
    return randomize_(Transformer(ModelConfig.from_name("tiny").replace(vocab_size=300)), seed).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_same_greedy_tokens_as_generate(batch):
    prompt = torch.randint(0, 300, (batch, 9), generator=torch.Generator().manual_seed(batch))
    ref = generate(_model(5), prompt, 12)
    gen = FastGenerator(_model(5), max_batch_size=4, max_seq_len=64, cuda_graph=False)
    seen = []
    out = gen.generate(prompt, 12, on_logits=lambda i, lg: seen.append(float(lg.abs().max())))
    assert out.new_ids == ref.new_ids  # fp32: fused matmuls differ only in reassociation noise
    assert len(seen) == 12 and min(seen) > 0.1  # real logits at every step
    again = gen.generate(prompt, 12)  # caches reused; stale entries are masked
    assert again.new_ids == ref.new_ids


def test_limits_are_clear_errors():
    gen = FastGenerator(_model(1), max_batch_size=2, max_seq_len=16, cuda_graph=False)
    with pytest.raises(ContextLengthError, match="max_seq_len=16"):
        gen.generate([1, 2, 3], 20)
    with pytest.raises(ValueError, match="max_batch_size=2"):
        gen.generate(torch.ones(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="cuda_graph=False"):
        FastGenerator(_model(1), max_batch_size=1, max_seq_len=8, cuda_graph=True)


def test_eos_stops_rows_as_generate_does():
    """FastGenerator runs generate's loop: a row keeps its eos and repeats it; the loop ends once all rows stopped."""
    prompt = torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(4))
    free = generate(_model(5), prompt, 10).new_ids
    eos = free[1][3]  # row 1 emits it at its 4th new token (others maybe later, maybe never)
    ref = generate(_model(5), prompt, 10, eos_id=eos)
    assert ref.new_ids[1] == free[1][:free[1].index(eos) + 1]
    gen = FastGenerator(_model(5), max_batch_size=4, max_seq_len=64, cuda_graph=False)
    out = gen.generate(prompt, 10, eos_id=eos)
    assert out.new_ids == ref.new_ids and out.n_new == ref.n_new
    assert torch.equal(out.tokens, ref.tokens)
    assert gen.generate(prompt, 10).new_ids == free  # no eos: every row runs max_new_tokens
