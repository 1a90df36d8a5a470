"""Medusa-style multi-token heads: K small heads on the target's final hidden state propose the K tokens
after the next one, for speculative decoding (decoding/speculative.py, method "heads").

    heads = load_heads("models/lab-small-medusa", target)    # HeadsError naming the file if it does not fit
    logits = heads.logits(h, target.lm_head)                 # h (..., dim) -> (..., K, vocab)

Head i (0-based) maps the hidden state h_t (the input of lm_head: after the final norm) of position t to
the token at t + i + 2 (lm_head itself gives t + 1): h_t + SiLU(W_i h_t + b_i), then the target's own
lm_head (Medusa-1's residual block; the projection to the vocabulary is shared with the frozen base, so a
head is dim^2 + dim parameters and the file a few MB). W_i starts at zero, so an untrained head predicts
what lm_head does (Cai et al. 2024, "Medusa"). Trained by train/heads.py with the base frozen.

Files (one directory): heads.safetensors (weight (K, dim, dim), bias (K, dim), fp32), config.json
(num_heads, hidden_size, vocab_size, base_model), MODEL_CARD.md.

HiddenTap records the hidden states lm_head sees into a static buffer (a forward hook that copies, so
a CUDA graph captured with the tap replays the copy too): SpeculativeDecoder reads the hidden state of
the last accepted position there after each verify, so proposing costs no extra target forward.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = "heads.safetensors"
CONFIG = "config.json"


class HeadsError(ValueError):
    """Heads that cannot be loaded or do not fit the target; the message is one line naming the file."""


class MedusaHeads(nn.Module):
    """K residual SiLU blocks on the final hidden state; the target's lm_head projects each to the vocabulary."""

    def __init__(self, num_heads: int, dim: int, vocab_size: int):
        super().__init__()
        self.num_heads, self.dim, self.vocab_size = num_heads, dim, vocab_size
        self.weight = nn.Parameter(torch.zeros(num_heads, dim, dim))  # (K, out, in); zero: starts as lm_head
        self.bias = nn.Parameter(torch.zeros(num_heads, dim))

    def hidden(self, h: torch.Tensor, num: Optional[int] = None) -> torch.Tensor:
        """(..., dim) -> (..., num, dim): the first num (default all K) heads' residual blocks."""
        w, b = self.weight[:num], self.bias[:num]
        z = torch.einsum("...d,ked->...ke", h, w.to(h.dtype)) + b.to(h.dtype)
        return h.unsqueeze(-2) + F.silu(z)

    def logits(self, h: torch.Tensor, lm_head: nn.Module, num: Optional[int] = None) -> torch.Tensor:
        """(..., dim) -> (..., num, vocab): head i's logits for the token i + 2 after h's position.
        lm_head's weights, not its forward: its hooks (HiddenTap) see only the target's own forwards."""
        return F.linear(self.hidden(h, num), lm_head.weight, lm_head.bias)


class HiddenTap:
    """Copies the last up-to-`width` rows of lm_head's input (row 0 of the batch) into a static buffer
    on every forward of `model` until remove(). For a forward of T tokens, token j's hidden state (j >= T - m,
    m = min(T, width)) is at buffer[j - (T - m)]; `row(T, j)` returns it."""

    def __init__(self, model, width: int):
        w = model.lm_head.weight
        self.width = width
        self.buffer = torch.zeros(width, w.shape[1], dtype=w.dtype, device=w.device)
        self._handle = model.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        x = inputs[0][0]  # (T, dim) of batch row 0
        m = min(x.shape[0], self.width)
        self.buffer[:m].copy_(x[x.shape[0] - m:])

    def row(self, T: int, j: int) -> torch.Tensor:
        """Hidden state (dim,) of token j of the latest forward of T tokens."""
        m = min(T, self.width)
        if not T - m <= j < T:
            raise IndexError(f"token {j} of a {T}-token forward is not in the tap's last {m} rows")
        return self.buffer[j - (T - m)]

    def rows(self, T: int, j0: int, j1: int) -> torch.Tensor:
        """Hidden states (j1 - j0, dim) of tokens j0..j1-1 of the latest forward of T tokens."""
        m = min(T, self.width)
        if not (T - m <= j0 <= j1 <= T):
            raise IndexError(f"tokens {j0}..{j1 - 1} of a {T}-token forward are not in the tap's last {m} rows")
        return self.buffer[j0 - (T - m):j1 - (T - m)]

    def remove(self) -> None:
        self._handle.remove()


def save_heads(heads: MedusaHeads, path: str, base_model: str, extra: dict = None) -> None:
    """Write heads.safetensors and config.json into the existing folder `path` (each file atomically)."""
    config = {"architecture": "medusa-1 residual SiLU heads, shared lm_head", "num_heads": heads.num_heads,
              "hidden_size": heads.dim, "vocab_size": heads.vocab_size, "base_model": base_model, **(extra or {})}
    save_side_files(path, WEIGHTS, {"weight": heads.weight.detach().float().contiguous().cpu(),
                                    "bias": heads.bias.detach().float().contiguous().cpu()}, CONFIG, config)


def save_side_files(path: str, weights_name: str, tensors: dict, config_name: str, config: dict) -> None:
    """A draft head's two files in the existing folder `path`: tensors as safetensors, config as JSON, each
    written to a .tmp and renamed (atomic). Medusa heads and the EAGLE head both save through here."""
    from safetensors.torch import save_file

    tmp = os.path.join(path, weights_name + ".tmp")
    save_file(tensors, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(path, weights_name))
    tmp = os.path.join(path, config_name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(path, config_name))


def heads_dir(source: Union[str, os.PathLike]) -> str:
    """The folder `source` names: a path (relative to where the user ran the command) or a shipped
    heads name (lab-small-medusa); HeadsError when it is neither."""
    return model_side_dir(source, CONFIG, HeadsError, f"heads directory not found: {{path}}; expected a folder with "
                          f"{CONFIG} and {WEIGHTS} (python3 -m train.heads writes one), or lab-small-medusa")


def model_side_dir(source: Union[str, os.PathLike], config: str, error: type, message: str) -> str:
    """A draft head's folder (Medusa heads, an EAGLE head): a shipped name under models/ holding `config`,
    else a path resolved against where the user ran the command; error(message.format(path=...)) if absent."""
    from model.loader import user_path

    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", os.fspath(source))
    if os.sep not in os.fspath(source) and os.path.isfile(os.path.join(shipped, config)):
        return shipped
    path = user_path(os.fspath(source))
    if not os.path.isdir(path):
        raise error(message.format(path=path))
    return path


def load_heads(source: Union[str, os.PathLike], target) -> MedusaHeads:
    """The heads in folder `source`, checked against the target model (hidden size, vocabulary), on the
    target's device and dtype, in eval mode. HeadsError (one line naming the file) when they do not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = heads_dir(source)
    cfg_path, w_path = os.path.join(path, CONFIG), os.path.join(path, WEIGHTS)
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
        k, dim, vocab = int(cfg["num_heads"]), int(cfg["hidden_size"]), int(cfg["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HeadsError(f"{cfg_path}: not a heads config with num_heads, hidden_size, vocab_size ({e})") from None
    tc = target.config
    if vocab != tc.vocab_size:
        raise HeadsError(f"{cfg_path}: heads for a vocabulary of {vocab} ids, the target has {tc.vocab_size}; "
                         f"they were trained for {cfg.get('base_model', 'another model')}")
    if dim != tc.dim:
        raise HeadsError(f"{cfg_path}: heads for hidden size {dim}, the target has {tc.dim}; "
                         f"they were trained for {cfg.get('base_model', 'another model')}")
    try:
        tensors = load_file(w_path)
    except (OSError, SafetensorError) as e:
        raise HeadsError(f"{w_path}: cannot read the heads' weights ({e})") from None
    want = {"weight": (k, dim, dim), "bias": (k, dim)}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != want:
        raise HeadsError(f"{w_path}: tensors {got} do not match {cfg_path} (want {want})")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise HeadsError(f"{w_path}: the heads' weights hold NaN/Inf")
    heads = MedusaHeads(k, dim, vocab)
    heads.load_state_dict(tensors)
    w = target.lm_head.weight
    return heads.to(device=w.device, dtype=w.dtype).eval().requires_grad_(False)
