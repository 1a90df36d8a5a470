"""EAGLE-style draft head: one decoder layer that drafts in the target's feature space, for speculative
decoding (decoding/speculative.py, method "eagle").

    head = load_eagle("models/lab-small-eagle", target)      # EagleError naming the file if it does not fit
    f = head.features(target, h_prev, ids, pos)              # (B, T, dim): the predicted features
    logits = head.logits(target, f)                          # the target's own lm_head over them

Position j of the head reads the target's feature h_{j-1} and the embedding of token t_j (EAGLE's
"feature + the token one step ahead", Li et al. 2024) fused by fc (2 dim -> dim), runs one pre-norm
decoder layer of the target's shape (model/llama.py's TransformerBlock, attention over the head's own
KV cache) and the target's final norm (frozen, shared), and predicts the feature h_j; the target's
lm_head (frozen, shared) turns it into the token t_{j+1}. Drafting k tokens feeds each predicted
feature back with the token it proposed (autoregressive over its own features).

The feature is the target's lm_head input (after the final norm), not EAGLE-1's pre-norm top-layer
state: decoding.heads.HiddenTap already copies exactly that tensor out of every target forward, CUDA
graphs included, so proposing needs no new hook or target forward; and a normed feature has a fixed
scale, which makes the head's regression target well conditioned (EAGLE-1 needed smooth L1 for the
pre-norm one). The head ends with the target's norm, so what it predicts is the same kind of tensor
it reads back. Embedding, final norm and lm_head are the target's and are never stored here.

Files (one directory): eagle.safetensors (fc.*, layer.* in fp16: half the bytes; the draft's precision
only changes what it proposes, never the verified output), config.json (hidden_size, vocab_size,
intermediate_size, heads, base_model), MODEL_CARD.md. Trained by train/eagle.py with the base frozen.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
from torch import nn

WEIGHTS = "eagle.safetensors"
CONFIG = "config.json"


class EagleError(ValueError):
    """A head that cannot be loaded or does not fit the target; the message is one line naming the file."""


def head_config(target_config, intermediate_size: Optional[int] = None):
    """The one-layer ModelConfig of a head for target_config (its attention shape, RoPE and norm)."""
    return target_config.replace(n_layers=1, n_experts=0,
                                 intermediate_size=intermediate_size or target_config.intermediate_size)


class EagleHead(nn.Module):
    """fc(concat(embed(t_j), h_{j-1})) -> one decoder layer -> the target's norm: the feature h_j."""

    def __init__(self, config):
        from model.llama import TransformerBlock

        super().__init__()
        self.config = config
        self.dim, self.vocab_size = config.dim, config.vocab_size
        self.fc = nn.Linear(2 * config.dim, config.dim, bias=True)
        self.layer = TransformerBlock(config)
        self.max_seq_len = -1
        self._rope = None  # (cos, signed sin) tables for the cache's positions

    def setup_cache(self, max_seq_len: int, device=None, dtype=None) -> None:
        """Install a batch-1 StaticKVCache of max_seq_len positions and RoPE tables for them."""
        from cache.static_cache import StaticKVCache
        from model.attention_backend import static_sdpa
        from model.layers import precompute_rope, signed_sin

        w = self.fc.weight
        c = self.config
        cache = StaticKVCache(1, c.n_kv_heads, max_seq_len, c.head_dim, dtype=dtype or w.dtype,
                              device=device or w.device)
        self.layer.self_attn.set_cache(cache, static_sdpa)
        cos, sin = precompute_rope(c, max_seq_len, device or w.device)
        self._rope = (cos, signed_sin(sin))
        self._key_pos = torch.arange(max_seq_len, device=device or w.device)
        self.max_seq_len = max_seq_len

    def remove_cache(self) -> None:
        """Drop the cache; features() goes back to causal attention over the given tokens."""
        self.layer.self_attn.set_cache(None)
        self.max_seq_len, self._rope = -1, None

    def features(self, target, h_prev: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """h_prev (B, T, dim) the features of positions pos - 1, ids (B, T) the tokens at pos (T,):
        the predicted features (B, T, dim) of positions pos. Over the cache (setup_cache) B is 1 and
        attention covers every cached position <= each query's; without one it is causal over T."""
        from model import masks
        from model.layers import precompute_rope, signed_sin

        x = self.fc(torch.cat((target.model.embed_tokens(ids).to(h_prev.dtype), h_prev), dim=-1))
        if self.max_seq_len > 0:
            cos, sin = self._rope[0][pos], self._rope[1][pos]
            mask = masks.visible_keys(self._key_pos, pos, None)
            x = self.layer(x, cos, sin, mask, pos)
        else:
            cos, sin = precompute_rope(self.config, int(pos.max()) + 1, x.device)
            x = self.layer(x, cos[pos], signed_sin(sin)[pos], None, None)
        return target.model.norm(x)

    def logits(self, target, f: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., vocab) through the target's lm_head weights (not its forward: the
        HiddenTap on it must see only the target's own forwards)."""
        lm = target.lm_head
        return nn.functional.linear(f, lm.weight.to(f.dtype), None if lm.bias is None else lm.bias.to(f.dtype))


def save_eagle(head: EagleHead, path: str, base_model: str, extra: dict = None) -> None:
    """Write eagle.safetensors (fp16) and config.json into the existing folder `path` (each atomically)."""
    from decoding.heads import save_side_files

    c = head.config
    config = {"architecture": "eagle: fc(embed, feature) + one decoder layer, the target's norm and lm_head",
              "feature": "lm_head input (after the final norm)", "hidden_size": c.dim,
              "vocab_size": c.vocab_size, "intermediate_size": c.intermediate_size, "num_heads": c.n_heads,
              "num_kv_heads": c.n_kv_heads, "base_model": base_model, **(extra or {})}
    save_side_files(path, WEIGHTS, {k: v.detach().half().contiguous().cpu() for k, v in head.state_dict().items()},
                    CONFIG, config)


def eagle_dir(source: Union[str, os.PathLike]) -> str:
    """The folder `source` names: a path (relative to where the user ran the command) or a shipped
    name (lab-small-eagle); EagleError when it is neither."""
    from decoding.heads import model_side_dir

    return model_side_dir(source, CONFIG, EagleError, f"EAGLE head directory not found: {{path}}; expected a folder "
                          f"with {CONFIG} and {WEIGHTS} (python3 -m train.eagle writes one), or lab-small-eagle")


def load_eagle(source: Union[str, os.PathLike], target) -> EagleHead:
    """The head in folder `source`, checked against the target (hidden size, vocabulary, attention
    shape), on the target's device and dtype, eval mode. EagleError (one line naming the file) otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = eagle_dir(source)
    cfg_path, w_path = os.path.join(path, CONFIG), os.path.join(path, WEIGHTS)
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
        dim, vocab, inter = int(cfg["hidden_size"]), int(cfg["vocab_size"]), int(cfg["intermediate_size"])
        nh, nkv = int(cfg["num_heads"]), int(cfg["num_kv_heads"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EagleError(f"{cfg_path}: not an EAGLE head config with hidden_size, vocab_size, intermediate_size, "
                         f"num_heads, num_kv_heads ({e})") from None
    tc = target.config
    for name, mine, theirs in (("vocabulary", vocab, tc.vocab_size), ("hidden size", dim, tc.dim),
                               ("query heads", nh, tc.n_heads), ("KV heads", nkv, tc.n_kv_heads)):
        if mine != theirs:
            raise EagleError(f"{cfg_path}: a head for {name} {mine}, the target has {theirs}; it was trained for "
                             f"{cfg.get('base_model', 'another model')}")
    try:
        tensors = load_file(w_path)
    except (OSError, SafetensorError) as e:
        raise EagleError(f"{w_path}: cannot read the head's weights ({e})") from None
    head = EagleHead(head_config(tc, inter))
    want = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise EagleError(f"{w_path}: tensors {sorted(got.items())} do not match {cfg_path} (want {sorted(want.items())})")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise EagleError(f"{w_path}: the head's weights hold NaN/Inf")
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    w = target.lm_head.weight
    return head.to(device=w.device, dtype=w.dtype).eval().requires_grad_(False)
