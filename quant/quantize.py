"""`quantize(model, method)`: the one place Linear layers are swapped for quantized ones.

Methods live in METHODS, a registry name -> QuantMethod (how to swap one nn.Linear).
Only "int8_weight_only" exists today; W8A8 (SmoothQuant), GPTQ and SpinQuant slot
in as further entries (GPTQ/SpinQuant will need a calibration hook on QuantMethod).

Checkpoint format (one for every quantized model), an ordinary HF-layout directory:
  config.json        the model's HF config plus
                     "quantization_config": {"quant_method": "lab", "method": <name>,
                     "version": FORMAT_VERSION, "skip": [...]}
  model.safetensors  (or sharded + index) with, per quantized Linear `<name>`:
                     `<name>.weight` int8 (out, in) and `<name>.weight_scale` fp32 (out,);
                     every other tensor as model.weights.save_model writes it.
`load_quantized(path)` builds the model on the meta device, swaps the same layers and
assigns the tensors, so no float copy of a quantized weight is ever made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from quant.int8 import Int8WeightOnlyLinear

FORMAT_VERSION = 1
CONFIG_KEY = "quantization_config"


class QuantizationError(ValueError):
    """A quantization request or checkpoint that cannot work; one line saying what to do."""


@dataclass(frozen=True)
class QuantMethod:
    """How one method turns an nn.Linear into its quantized module."""

    name: str
    from_linear: Callable[[nn.Linear], nn.Module]  # quantize a real Linear
    empty: Callable[[nn.Linear], nn.Module]  # same structure, for loading (meta device)
    description: str


def _empty_int8(linear: nn.Linear) -> nn.Module:
    return Int8WeightOnlyLinear(linear.in_features, linear.out_features,
                                bias=linear.bias is not None, device=linear.weight.device,
                                dtype=linear.weight.dtype)


METHODS: dict[str, QuantMethod] = {
    "int8_weight_only": QuantMethod(
        name="int8_weight_only",
        from_linear=Int8WeightOnlyLinear.from_linear,
        empty=_empty_int8,
        description="symmetric per-output-channel int8 weights, fp activations (W8A16)"),
}

DEFAULT_SKIP = ("lm_head",)


def _method(name: str) -> QuantMethod:
    if name not in METHODS:
        raise QuantizationError(f"unknown quantization method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """A module is skipped when its qualified name or its last component is in skip."""
    return any(name == s or name.endswith("." + s) for s in skip)


def _swap_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module],
                  skip: Iterable[str]) -> list[str]:
    """Replace every nn.Linear child not in skip with make(child); return the swapped names."""
    swapped = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and not _skipped(full, skip):
                setattr(parent, child_name, make(child))
                swapped.append(full)
    return swapped


@torch.no_grad()
def quantize(model: nn.Module, method: str = "int8_weight_only",
             skip: Iterable[str] = DEFAULT_SKIP) -> nn.Module:
    """Swap model's nn.Linear layers (except `skip`) for `method`'s modules, in place; return model.

    skip: module names (qualified, or a last component such as "lm_head") left in
    floating point. The LM head is skipped by default: it is one layer, reads the
    whole vocabulary and is the most sensitive to weight error. A tied LM head
    (tie_word_embeddings) cannot be quantized without untying it, so it must be skipped.
    """
    qm = _method(method)
    skip = tuple(skip)
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False) and not _skipped("lm_head", skip):
        raise QuantizationError("lm_head is tied to embed_tokens (tie_word_embeddings); "
                                "keep 'lm_head' in skip")
    swapped = _swap_linears(model, qm.from_linear, skip)
    if not swapped:
        raise QuantizationError(f"no nn.Linear layers to quantize (skip={list(skip)})")
    model.quantization = {"quant_method": "lab", "method": method, "version": FORMAT_VERSION,
                          "skip": list(skip)}
    return model


def save_quantized(model: nn.Module, path: str, max_shard_bytes: Optional[int] = None, *,
                   overwrite: bool = False) -> None:
    """Write a quantized model in the format of the module docstring.

    `path` follows model.weights.save_model: a directory someone else wrote is refused unless
    overwrite; over an earlier save of ours, stale weight files are removed.
    """
    from model.weights import save_model

    qc = getattr(model, "quantization", None)
    if qc is None:
        raise QuantizationError("model is not quantized; call quant.quantize(model, ...) first")
    save_model(model, path, max_shard_bytes=max_shard_bytes, overwrite=overwrite,
               extra_config={CONFIG_KEY: qc})


def load_quantized(path: str, device="cpu", dtype=None) -> nn.Module:
    """Load a checkpoint written by save_quantized; dtype (default: the checkpoint's) applies to
    floating-point tensors only (int8 weights stay int8, scales stay fp32)."""
    from model.config import ModelConfig
    from model.llama import Transformer
    from model.config import ConfigError, read_json
    from model.device import DTYPES
    from model.weights import check_finite, open_safetensors, weight_files

    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise QuantizationError(f"no config.json in {path}; expected a save_quantized directory")
    raw = read_json(cfg_path, QuantizationError)
    qc = raw.get(CONFIG_KEY) if isinstance(raw, dict) else None
    if not qc or qc.get("quant_method") != "lab":
        raise QuantizationError(f"{cfg_path} has no lab quantization_config; load it with "
                                "model.weights.load_model instead")
    if qc.get("version") != FORMAT_VERSION:
        raise QuantizationError(f"quantization format version {qc.get('version')} is not "
                                f"{FORMAT_VERSION}; re-export with this code")
    qm = _method(qc["method"])
    try:
        config = ModelConfig.from_hf_config(raw)
    except ConfigError as e:
        raise QuantizationError(f"{cfg_path}: {e}") from None
    dtype = dtype or DTYPES.get(config.torch_dtype, torch.float32)
    with torch.device("meta"):
        model = Transformer(config)
    _swap_linears(model, qm.empty, qc.get("skip", DEFAULT_SKIP))
    expected = dict(model.state_dict())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    files = weight_files(path, QuantizationError)
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    if missing or unexpected:
        raise QuantizationError(f"checkpoint {path} does not match its config: missing "
                                f"{missing[:5]}, unexpected {unexpected[:5]}")
    by_file: dict[str, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    state = {}
    for fname, names in by_file.items():
        with open_safetensors(fname, QuantizationError) as f:
            for name in names:
                t, ref = f.get_tensor(name), expected[name]
                if tuple(t.shape) != tuple(ref.shape) or (t.dtype == torch.int8) != (
                        ref.dtype == torch.int8):
                    raise QuantizationError(f"tensor {name}: expected {tuple(ref.shape)} "
                                            f"{ref.dtype}, found {tuple(t.shape)} {t.dtype}")
                if ref.dtype != torch.int8 and not t.is_floating_point():
                    raise QuantizationError(f"tensor {name} in {fname} has dtype {t.dtype}; expected floating point")
                if t.is_floating_point() and not name.endswith("weight_scale"):
                    t = t.to(dtype)
                if t.is_floating_point():
                    check_finite(t, name, fname, t.dtype, QuantizationError)
                state[name] = t.to(device)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    model.quantization = qc
    return model.eval()
