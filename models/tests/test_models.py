"""The shipped models load with our loader and with Hugging Face transformers, to the same logits."""

import json

import pytest
import torch

from model.embedded import SHIPPED_MODELS, shipped_model_dir
from model.tokenizer import load_tokenizer
from model.weights import load_model

# fp32 on both sides; the two implementations order their reductions differently, so
# logits agree to ~1e-5 of their scale, not bit for bit.
RTOL = 1e-4


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_loads_with_ours_and_transformers(name):
    transformers = pytest.importorskip("transformers")
    path = shipped_model_dir(name)
    card = (path / "MODEL_CARD.md").read_text()
    assert "perplexity" in card.lower()
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded like HF: every shard under 16 MiB
        for shard in set(json.loads(index.read_text())["weight_map"].values()):
            assert (path / shard).stat().st_size < 16 * 2**20
    ours = load_model(str(path), device="cpu", dtype=torch.float32).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    tok = load_tokenizer(str(path))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path))
    text = "ROMEO:\nWhat light through yonder window breaks?"
    ids = tok.encode(text, bos=True)
    assert hf_tok(text)["input_ids"] == ids  # same ids, BOS added by the post-processor
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(2, tok.vocab_size, (1, 40), generator=g)  # fresh random ids too
    for x in (torch.tensor([ids]), rand):
        with torch.no_grad():
            a = ours(x).float()
            b = hf(x).logits.float()
        assert a.abs().max() > 1.0  # real logits, not zeros
        err = (a - b).abs().max() / b.abs().max()
        assert err < RTOL, f"{name}: max relative logit error {err:.2e} >= {RTOL}"
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_trained_not_random(name):
    """Greedy text from the prompt is mostly words: a random model would print byte soup."""
    from decoding.generate import generate

    path = shipped_model_dir(name)
    model = load_model(str(path), device="cpu", dtype=torch.float32)
    tok = load_tokenizer(str(path))
    out = generate(model, tok.encode("ROMEO:", bos=True), 32).new_ids[0]
    words = tok.decode(out).split()
    assert len(words) >= 8 and sum(w.strip(".,;:!?'").isalpha() for w in words) >= 0.6 * len(words)
