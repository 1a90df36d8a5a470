"""Shapes of the models the lab trains: ModelConfig overrides, one tokenizer for all.

lab-small is the target model of the evals and demos (~12.6M parameters with the
8192-id tokenizer); lab-draft is its speculative-decoding draft, ~1/9 of its size and
the same tokenizer, so its tokens can be verified by lab-small directly. Both tie
the LM head to the embedding (at 8k ids an untied head would add 25% to lab-small)
and use GQA so the trained models exercise the grouped KV path.
"""

from __future__ import annotations

from model.config import ModelConfig

TRAIN_PRESETS: dict[str, dict] = {
    # 6 x (attn 393K + SwiGLU 1.18M) + embedding 8192 x 384 (tied) = 12.6M parameters.
    "lab-small": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, intermediate_size=1024),
    # 2 x (attn 49K + SwiGLU 147K) + embedding 8192 x 128 (tied) = 1.44M parameters.
    "lab-draft": dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=384),
    # CPU tests only: a few seconds per run.
    "micro": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=64),
}


def build_config(preset: str, vocab_size: int, seq_len: int, bos_id, eos_id, **overrides) -> ModelConfig:
    """ModelConfig of `preset` for a tokenizer of vocab_size ids and a context of seq_len.

    overrides: ModelConfig fields (None values are ignored), e.g. dim=512.
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(TRAIN_PRESETS))}")
    fields = dict(TRAIN_PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(vocab_size=vocab_size, max_seq_len=seq_len, tie_word_embeddings=True,
                       norm_eps=1e-5, rope_theta=10000.0, torch_dtype="float32",
                       bos_token_id=bos_id, eos_token_id=eos_id, **fields)


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters (LM head included) + causal attention.

    Attention scores and values: 2 matmuls of 2*T*hd per head per token forward, halved
    by the causal mask, x3 for backward: 6 * L * n_heads * hd * T.
    """
    d, hd = config.dim, config.head_dim
    matmul = (config.n_layers * (d * config.n_heads * hd * 2 + d * config.n_kv_heads * hd * 2
                                 + 3 * d * config.intermediate_size) + config.vocab_size * d)
    attention = 6 * config.n_layers * config.n_heads * hd * seq_len
    return 6.0 * matmul + attention
