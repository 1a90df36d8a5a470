"""The decoder architectures one configured Transformer runs, and how each one's checkpoint maps
onto our (Llama-layout) module names.

One model, configured: an architecture is a handful of ModelConfig switches (biases, norm type,
activation, gated or plain MLP, parallel block, partial rotary, sliding window, experts), read
here from a Hugging Face config.json, plus a name map from its checkpoint tensors to ours, used
by model.weights.load_model. Nothing here builds layers.

  llama    LlamaForCausalLM    the reference layout
  mistral  MistralForCausalLM  + sliding_window (keys at positions > q - window)
  qwen2    Qwen2ForCausalLM    + q/k/v biases; tied embeddings where the config says so
  phi3     Phi3ForCausalLM     fused qkv_proj / gate_up_proj tensors (split on load), sliding window,
                               longrope ("su") RoPE scaling (model/config.py, model/layers.py)
  phi      PhiForCausalLM      Phi-2: parallel attention + MLP under one LayerNorm (with bias),
                               biases on every linear incl. lm_head, GELU (tanh), partial rotary;
                               `dense` -> o_proj, fc1/fc2 -> up/down_proj, final_layernorm -> norm
  mixtral  MixtralForCausalLM  top-k router + expert SwiGLU MLPs (model/moe.py); the per-expert
                               w1/w3/w2 tensors are stacked on load into w13 (E, 2I, H), w2 (E, H, I)
"""

from __future__ import annotations

import re
from typing import Callable

import torch

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "phi": "PhiForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
# HF hidden_act names of the tanh-approximated GELU (Phi-2's "gelu_new") and the exact one.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACTIVATIONS = ("silu", "gelu") + GELU_TANH


def supported() -> str:
    """'llama (LlamaForCausalLM), mistral (...), ...' for error messages."""
    return ", ".join(f"{t} ({a})" for t, a in ARCHITECTURES.items())


def read_fields(c: dict, error: type) -> dict:
    """The architecture's ModelConfig fields from HF config dict c; `error` (one line) if unsupported."""
    model_type = c.get("model_type")
    archs = c.get("architectures") or []
    if model_type not in ARCHITECTURES or any(a != ARCHITECTURES[model_type] for a in archs):
        raise error(f"unsupported architecture (model_type={model_type!r}, architectures={archs}); "
                    f"supported: {supported()}")
    act = c.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise error(f"hidden_act {act!r} is not supported; expected one of {ACTIVATIONS}")
    f = dict(arch=model_type, hidden_act=act)
    if model_type in ("llama", "mistral", "qwen2", "phi3", "mixtral") and act != "silu":
        raise error(f"{model_type}: hidden_act {act!r} is not supported in a gated MLP; expected 'silu'")
    if c.get("mlp_bias") or (c.get("attention_bias") and model_type != "qwen2"):
        raise error("attention_bias/mlp_bias checkpoints are not supported for "
                    f"{model_type}; use a bias-free checkpoint")
    window = c.get("sliding_window")
    if model_type == "qwen2":
        f["qkv_bias"] = True
        # Qwen2 applies its window only when use_sliding_window, and then only to layers
        # >= max_window_layers: per-layer windows are not implemented, so refuse them.
        if c.get("use_sliding_window") or "sliding_attention" in (c.get("layer_types") or []):
            raise error("qwen2 with use_sliding_window (per-layer sliding windows) is not supported")
        window = None
    if model_type in ("mistral", "phi3", "mixtral") and window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise error(f"sliding_window must be a positive integer or null, got {window!r}")
        f["sliding_window"] = window
    if model_type == "phi":
        if c.get("qk_layernorm"):
            raise error("phi with qk_layernorm is not supported")
        f.update(qkv_bias=True, out_bias=True, norm_type="layer", gated_mlp=False, parallel_block=True)
    if model_type == "mixtral":
        for key in ("num_local_experts", "num_experts_per_tok"):
            if not isinstance(c.get(key), int) or isinstance(c.get(key), bool) or c[key] < 1:
                raise error(f"mixtral config needs a positive integer {key}, got {c.get(key)!r}")
        f.update(n_experts=c["num_local_experts"], n_experts_per_tok=c["num_experts_per_tok"])
    return f


def partial_rotary_factor(c: dict, params: dict) -> float:
    """Phi's fraction of head_dim that RoPE rotates (top level or inside rope_parameters), else 1."""
    return float(params.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) or 1.0)


# ----------------------------------------------------------------------------- checkpoint names
# A plan maps each of our state-dict names to (checkpoint names, combine) where combine takes the
# checkpoint tensors in that order and returns ours. `None` slices mean the whole tensor.
Plan = dict[str, tuple[list[str], Callable[[list[torch.Tensor]], torch.Tensor]]]

_PHI_RENAMES = (("self_attn.dense.", "self_attn.o_proj."), ("mlp.fc1.", "mlp.up_proj."),
                ("mlp.fc2.", "mlp.down_proj."), ("model.final_layernorm.", "model.norm."))


def _first(ts):
    return ts[0]


def is_plain_copy(entry) -> bool:
    """Whether a checkpoint_plan entry reads one checkpoint tensor as it is (a copy or a rename)."""
    srcs, combine = entry
    return combine is _first and len(srcs) == 1


def _rows(start: int, stop: int):
    """combine: rows start..stop-1 of the one fused tensor."""
    return lambda ts: ts[0][start:stop]


def checkpoint_plan(config, ours: list[str]) -> Plan:
    """For our state-dict names `ours`, where each comes from in a checkpoint of config.arch."""
    plan: Plan = {}
    q = config.n_heads * config.head_dim
    kv = config.n_kv_heads * config.head_dim
    inter = config.intermediate_size
    for name in ours:
        if config.arch == "phi3" and re.search(r"self_attn\.[qkv]_proj\.weight$", name):
            fused = re.sub(r"[qkv]_proj", "qkv_proj", name)
            which = name.split(".")[-2][0]
            start = {"q": 0, "k": q, "v": q + kv}[which]
            plan[name] = ([fused], _rows(start, start + (q if which == "q" else kv)))
        elif config.arch == "phi3" and re.search(r"mlp\.(gate|up)_proj\.weight$", name):
            fused = re.sub(r"(gate|up)_proj", "gate_up_proj", name)
            start = 0 if ".gate_proj." in name else inter
            plan[name] = ([fused], _rows(start, start + inter))
        elif config.arch == "mixtral" and name.endswith(".mlp.w13"):
            base = name[:-len("mlp.w13")] + "block_sparse_moe.experts."
            names = [f"{base}{e}.{w}.weight" for e in range(config.n_experts) for w in ("w1", "w3")]
            plan[name] = (names, lambda ts: torch.stack([torch.cat(ts[i:i + 2]) for i in range(0, len(ts), 2)]))
        elif config.arch == "mixtral" and name.endswith(".mlp.w2"):
            base = name[:-len("mlp.w2")] + "block_sparse_moe.experts."
            plan[name] = ([f"{base}{e}.w2.weight" for e in range(config.n_experts)], torch.stack)
        elif config.arch == "mixtral" and name.endswith(".mlp.gate.weight"):
            plan[name] = ([name.replace(".mlp.gate.", ".block_sparse_moe.gate.")], _first)
        else:
            src = name
            if config.arch == "phi":
                for theirs, mine in _PHI_RENAMES:
                    src = src.replace(mine, theirs)
            plan[name] = ([src], _first)
    return plan


def source_shapes(plan: Plan, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """The shape each checkpoint tensor must have, given our shapes (fused/stacked sources derived)."""
    out: dict[str, tuple] = {}
    for name, (srcs, combine) in plan.items():
        shape = tuple(shapes[name])
        if combine is _first:
            out[srcs[0]] = shape
        elif combine is torch.stack:  # mixtral w2: (E, H, I) from E tensors (H, I)
            out.update({s: shape[1:] for s in srcs})
        elif name.endswith(".mlp.w13"):  # (E, 2I, H) from w1, w3 (I, H) per expert
            out.update({s: (shape[1] // 2, shape[2]) for s in srcs})
        else:  # a row slice of a fused tensor: its rows add up over the parts
            out[srcs[0]] = (out.get(srcs[0], (0,))[0] + shape[0],) + shape[1:]
    return out
