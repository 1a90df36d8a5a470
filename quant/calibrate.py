"""Calibration data and the layer-by-layer pass the calibrated methods (GPTQ, AWQ, SmoothQuant) share.

Calibration text is the lab's training split (data.corpus "train"), never WikiText-2 test or
the held-out split: `calibration_ids` cuts `n_samples` random windows of `seqlen` tokens
from its token stream (seeded, so a quantization is reproducible).

`LayerRunner` holds the hidden states entering one decoder layer for every calibration
window. A method quantizes layer i from the inputs its linears see (`capture`), then
`advance` runs the (now quantized) layer to get layer i+1's inputs, as GPTQ's reference
does: later layers calibrate on what the quantized earlier layers really produce.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def calibration_ids(tokenizer, n_samples: int = 16, seqlen: int = 512, seed: int = 0) -> torch.Tensor:
    """(n_samples, seqlen) long: random windows of data.corpus's train split (never test data)."""
    from data import corpus

    ids = torch.tensor(corpus.token_stream(tokenizer, "train"), dtype=torch.long)
    if len(ids) <= seqlen:
        raise ValueError(f"train split has {len(ids)} tokens, fewer than one calibration window of {seqlen}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen, (n_samples,), generator=g)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])  # (n_samples, seqlen)


def linear_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the weight of `module` multiplies: x, rotated first for a RotatedLinear (quant.rotation)."""
    rot = getattr(module, "rotation", None)
    return x if rot is None else (x.float() @ rot).to(x.dtype)


class LayerRunner:
    """Hidden states (n, T, dim) entering model.model.layers[i], advanced one layer at a time."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, batch_size: int = 8):
        self.model, self.batch_size = model, batch_size
        T = ids.shape[1]
        dev = model.model.embed_tokens.weight.device
        model.setup_rope(T, dev)
        self.cos, self.sin = model.rope_cos[:T], model.rope_sin[:T]
        with torch.no_grad():
            self.hidden = model.model.embed_tokens(ids.to(dev))  # (n, T, dim)

    def _batches(self) -> Iterable[torch.Tensor]:
        for i in range(0, self.hidden.shape[0], self.batch_size):
            yield self.hidden[i:i + self.batch_size]

    @torch.no_grad()
    def capture(self, layer: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        """Run `layer` on every window; return name -> the inputs (tokens, in) its linear's weight saw."""
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        hooks = []
        for n in names:
            mod = layer.get_submodule(n)
            hooks.append(mod.register_forward_hook(
                lambda m, args, out, n=n: seen[n].append(linear_input(m, args[0]).reshape(-1, args[0].shape[-1]))))
        try:
            for x in self._batches():
                layer(x, self.cos, self.sin, None, None)
        finally:
            for h in hooks:
                h.remove()
        return {n: torch.cat(v).float() for n, v in seen.items()}

    @torch.no_grad()
    def advance(self, layer: nn.Module) -> None:
        """Replace the hidden states by layer's outputs (the next layer's inputs)."""
        self.hidden = torch.cat([layer(x, self.cos, self.sin, None, None) for x in self._batches()])


# The linears of a Llama layer grouped by the input they share, in execution order.
GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
          ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))
