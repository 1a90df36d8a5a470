"""`quantize(model, method, calib, **opts)`: the one place Linear layers are swapped for quantized ones,
and the checkpoint formats they are saved in and loaded from.

Methods (METHODS: name -> defaults of its options; unknown names or options are one-line errors):
  int8_weight_only  per-channel int8 weights (quant/int8.py)
  rtn               bits (2/4/8), group_size (-1 = per row), sym, act_bits (None/8/4)
  gptq              rtn's options + act_order, percdamp, blocksize (quant/gptq.py; calibrated)
  awq               W4 g128 activation-aware scales (quant/awq.py; calibrated)
  smoothquant       W8A8, alpha (quant/smoothquant.py; calibrated)
  fp8               e4m3 weights, per_row, act None/"per_tensor"/"per_token"
`rotate` (rtn, gptq) first applies quant/rotation.py (R1, R2, online R4): True or "hadamard" = the
random Hadamard (QuaRot); "cayley" = SpinQuant, R1 / R2 learned by Cayley SGD on calib
(quant/spinquant.py; rotate_steps, rotate_lr; rotate_objective: what it rounds, rotation_objective), then the
method quantizes the rotated weights (gptq: with the rotated model's calibration activations).
`kv_bits` (rtn, gptq: None/8/4) stores K/V as an int8/int4 cache does (cache/kv_quant.py).
`calib` is (n, T) token ids from the training split (quant.calibrate.calibration_ids).

Checkpoint formats (save_quantized picks; load_quantized reads any of them, by config.json's
quantization_config.quant_method):
  "gptq"  HF GPTQ layout (quant/formats.py) for rtn/gptq weight-only models (transformers,
          vLLM, TGI read it);  "awq" AutoAWQ GEMM layout for awq;
  "lab"   every other model (W8A8, FP8, rotations, int8_weight_only): config.json gains
          {"quant_method": "lab", "method", "version", "skip", "options", "rotated"} and the
          safetensors hold each quantized module's buffers as named in quant/qlinear.py / int8.py.
Loading builds the model on the meta device and assigns tensors: no float copy of a quantized weight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from quant.int8 import Int8WeightOnlyLinear
from quant.qlinear import FP8Linear, QuantLinear
from quant.rotation import RotatedLinear
from quant.rtn import QuantizationError, check_bits, check_group_size, rtn_quantize

FORMAT_VERSION = 1
CONFIG_KEY = "quantization_config"
DEFAULT_SKIP = ("lm_head",)
_INT = dict(bits=4, group_size=128, sym=False, act_bits=None, rotate=False, kv_bits=None, rotate_steps=10,
            rotate_lr=1.0, rotate_objective="auto")
ROTATIONS = (False, True, "hadamard", "cayley")
ROTATE_OBJECTIVES = ("auto", "rtn", "act")  # rotation_objective


@dataclass(frozen=True)
class QuantMethod:
    """A method's option defaults, whether it needs calibration data, and one line on what it does."""

    name: str
    defaults: dict
    calibrated: bool
    description: str


METHODS: dict[str, QuantMethod] = {m.name: m for m in (
    QuantMethod("int8_weight_only", {}, False, "symmetric per-output-channel int8 weights, fp activations (W8A16)"),
    QuantMethod("rtn", dict(_INT), False, "round-to-nearest group quantization (W4A16 g128 by default)"),
    QuantMethod("gptq", dict(_INT, act_order=False, percdamp=0.01, blocksize=128), True,
                "GPTQ: Hessian-weighted error feedback, column by column"),
    QuantMethod("awq", dict(bits=4, group_size=128, n_grid=20), True,
                "AWQ: activation-aware per-channel scales, then W4 RTN"),
    QuantMethod("smoothquant", dict(alpha=0.5), True,
                "SmoothQuant W8A8: smoothed per-channel int8 weights, per-token int8 activations"),
    QuantMethod("fp8", dict(per_row=False, act=None), False,
                "FP8 e4m3 weights (per tensor or row), optional dynamic e4m3 activations"),
)}
_FP8_ACTS = (None, "per_tensor", "per_token")


def _method(name: str) -> QuantMethod:
    if name not in METHODS:
        raise QuantizationError(f"unknown quantization method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def resolve_options(method: str, opts: dict) -> dict:
    """method's defaults updated by opts; QuantizationError naming an unknown option or a bad value."""
    qm = _method(method)
    unknown = sorted(set(opts) - set(qm.defaults))
    if unknown:
        raise QuantizationError(f"unknown option(s) {unknown} for method {method!r}; it takes {sorted(qm.defaults)}")
    o = {**qm.defaults, **opts}
    if "bits" in o:
        check_bits(o["bits"])
    if method == "awq" and o["bits"] != 4:
        raise QuantizationError(f"awq quantizes to 4 bits (the AWQ GEMM layout), got bits={o['bits']}")
    if o.get("act_bits") not in (None, 4, 8):
        raise QuantizationError(f"act_bits={o['act_bits']}; choose None (weight-only), 8 or 4")
    if "rotate" in o and o["rotate"] not in ROTATIONS:
        raise QuantizationError(f"rotate={o['rotate']!r}; choose one of {ROTATIONS}")
    if "rotate_objective" in o and o["rotate_objective"] not in ROTATE_OBJECTIVES:
        raise QuantizationError(f"rotate_objective={o['rotate_objective']!r}; choose one of {ROTATE_OBJECTIVES}")
    if o.get("kv_bits") is not None:
        from cache.kv_quant import KVQuantError, check_kv_bits
        try:
            check_kv_bits(o["kv_bits"])
        except KVQuantError as e:
            raise QuantizationError(str(e)) from None
    if method == "fp8" and o["act"] not in _FP8_ACTS:
        raise QuantizationError(f"fp8 act={o['act']!r}; choose one of {_FP8_ACTS}")
    return o


def int_spec(method: str, o: dict) -> tuple[int, int, bool, Optional[int]]:
    """(bits, group_size, sym, act_bits) of an integer method's QuantLinear layers."""
    if method == "smoothquant":
        return 8, -1, True, 8
    if method == "awq":
        return 4, o["group_size"], False, None
    return o["bits"], o["group_size"], o["sym"], o["act_bits"]


def rotation_objective(method: str, o: dict) -> tuple:
    """The (bits, group_size, sym, act_bits) SpinQuant's Cayley SGD rounds to before `method` quantizes.

    rotate_objective "rtn": the RTN grid of the weights (and the activations / KV). "act": weights
    left unrounded (bits None), activations / KV rounded. "auto" (default): "act" for gptq with
    quantized activations or KV (SpinQuant's recipe: learn R for W16A4KV4, then GPTQ W4A4KV4, as
    GPTQ's error feedback, not RTN's rounding, decides the weight error), else "rtn" (rtn itself;
    weight-only gptq, where a float-weight, float-activation objective does not depend on R).
    """
    spec = int_spec(method, o)
    act = o.get("act_bits") is not None or o.get("kv_bits") is not None
    kind = o.get("rotate_objective", "auto")
    if kind == "auto":
        kind = "act" if method == "gptq" and act else "rtn"
    if kind == "act" and not act:
        raise QuantizationError("rotate_objective='act' needs act_bits or kv_bits: with float weights and "
                                "activations the loss does not depend on the rotation")
    return (None, *spec[1:]) if kind == "act" else spec


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """A module is skipped when its qualified name or its last component is in skip."""
    return any(name == s or name.endswith("." + s) for s in skip)


def targets(model: nn.Module, skip: Iterable[str]) -> list[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, attribute, qualified name, module) of every nn.Linear / RotatedLinear not in skip."""
    found = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if (type(child) is nn.Linear or isinstance(child, RotatedLinear)) and not _skipped(full, skip):
                found.append((parent, child_name, full, child))
    return found


def _inner(mod: nn.Module) -> tuple[nn.Linear, Optional[torch.Tensor]]:
    return (mod.linear, mod.rotation) if isinstance(mod, RotatedLinear) else (mod, None)


def _int_module(mod: nn.Module, codes: tuple, spec: tuple) -> QuantLinear:
    lin, rot = _inner(mod)
    bits, gs, sym, act_bits = spec
    return QuantLinear.from_quantized(lin, *codes, bits=bits, group_size=check_group_size(gs, lin.in_features),
                                      sym=sym, act_bits=act_bits, rotation=rot)


def _rtn_module(mod: nn.Module, spec: tuple, name: str) -> QuantLinear:
    lin, _ = _inner(mod)
    return _int_module(mod, rtn_quantize(lin.weight, spec[0], spec[1], spec[2], name), spec)


@torch.no_grad()
def quantize(model: nn.Module, method: str = "int8_weight_only", calib: Optional[torch.Tensor] = None, *,
             skip: Iterable[str] = DEFAULT_SKIP, progress: bool = False, lm_head: bool = False,
             **opts) -> nn.Module:
    """Quantize model's Linear layers (except `skip`) with `method` (module docstring), in place; return model.

    calib: (n, T) long token ids (quant.calibrate.calibration_ids) for gptq/awq/smoothquant.
    skip: module names (qualified, or a last component such as "lm_head") left in floating
    point. The LM head is skipped by default: it reads the whole vocabulary and is the most
    sensitive to weight error; a tied LM head cannot be quantized without untying it.
    lm_head: quantize the LM head too (as torchao's quantize_ does): "lm_head" leaves skip and a tied
    head is untied first (its own copy of the embedding; config.tie_word_embeddings becomes False, so
    a save -> load round trip keeps the float embedding and the quantized head apart).
    """
    qm = _method(method)
    o = resolve_options(method, opts)
    skip = tuple(skip)
    config = getattr(model, "config", None)
    if lm_head:
        skip = tuple(s for s in skip if s != "lm_head")
        if getattr(config, "tie_word_embeddings", False) and hasattr(model, "lm_head"):
            model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
            model.config = config = config.replace(tie_word_embeddings=False)
    if getattr(config, "tie_word_embeddings", False) and not _skipped("lm_head", skip):
        raise QuantizationError("lm_head is tied to embed_tokens (tie_word_embeddings); keep 'lm_head' in skip")
    found = targets(model, skip)
    if not found:
        raise QuantizationError(f"no nn.Linear layers to quantize (skip={list(skip)})")
    if "group_size" in o:  # every layer's shape is checked before any work
        for _, _, name, mod in found:
            check_group_size(o["group_size"], _inner(mod)[0].in_features, name)
    if (qm.calibrated or o.get("rotate") == "cayley") and calib is None:
        raise QuantizationError(f"method {method!r} with rotate={o.get('rotate')!r} needs calibration token ids "
                                "(quant.calibrate.calibration_ids)")
    if o.get("rotate") == "cayley":
        from quant.rotation import rotate
        from quant.spinquant import learn_rotations
        r1, r2, report = learn_rotations(model, calib, rotation_objective(method, o), {n for _, _, n, _ in found},
                                         kv_bits=o["kv_bits"], steps=o["rotate_steps"], lr=o["rotate_lr"],
                                         progress=progress)
        rotate(model, r1=r1, r2=r2, kind="cayley")
        model.rotation["report"] = report
        found = targets(model, skip)
    elif o.get("rotate"):
        from quant.rotation import rotate
        rotate(model)
        found = targets(model, skip)
    if method == "int8_weight_only":
        for parent, attr, _, mod in found:
            setattr(parent, attr, Int8WeightOnlyLinear.from_linear(mod))
    elif method == "fp8":
        for parent, attr, _, mod in found:
            setattr(parent, attr, FP8Linear.from_linear(mod, o["per_row"], o["act"]))
    elif method == "rtn":
        spec = int_spec(method, o)
        for parent, attr, name, mod in found:
            setattr(parent, attr, _rtn_module(mod, spec, name))
    else:
        _calibrated(model, method, o, calib, skip, progress)
    if o.get("kv_bits") is not None:
        from cache.kv_quant import install_kv_quant
        install_kv_quant(model, o["kv_bits"])
    model.quantization = {"quant_method": "lab", "method": method, "version": FORMAT_VERSION, "skip": list(skip),
                          "options": o, "rotated": bool(o.get("rotate"))}
    return model


def _calibrated(model, method: str, o: dict, calib: torch.Tensor, skip, progress: bool) -> None:
    """GPTQ / AWQ / SmoothQuant, one decoder layer at a time on the calibration windows."""
    from tqdm import tqdm

    from quant.awq import search_scale
    from quant.calibrate import GROUPS, LayerRunner
    from quant.gptq import gptq_quantize
    from quant.smoothquant import fold_input_scale, smooth_scales

    spec = int_spec(method, o)
    runner = LayerRunner(model, calib)
    layers = model.model.layers
    for i, layer in enumerate(tqdm(layers, desc=f"{method} layers", unit="layer", disable=not progress)):
        def full(n):
            return f"model.layers.{i}.{n}"

        if method == "gptq":
            for group in GROUPS:  # true-sequential: each group sees the quantized groups before it
                x = runner.capture(layer, [group[0]])[group[0]]
                H = (2.0 / x.shape[0]) * (x.T @ x)  # fp32: an fp64 matmul costs 10x on a CPU
                for n in group:
                    if _skipped(full(n), skip):
                        continue
                    mod = layer.get_submodule(n)
                    codes = gptq_quantize(_inner(mod)[0].weight, H, spec[0], spec[1], spec[2],
                                          o["act_order"], o["percdamp"], o["blocksize"], full(n))
                    _replace(layer, n, _int_module(mod, codes, spec))
        else:
            feats = runner.capture(layer, [g[0] for g in GROUPS])
            for group in GROUPS:
                ws = [layer.get_submodule(n).weight for n in group]
                if method == "awq":
                    s, _ = search_scale(feats[group[0]], ws, spec[0], spec[1], spec[2], o["n_grid"])
                else:
                    s = smooth_scales(feats[group[0]].abs().amax(dim=0), ws, o["alpha"])
                fold_input_scale(layer, group, s, model.config)
            for group in GROUPS:
                for n in group:
                    if not _skipped(full(n), skip):
                        _replace(layer, n, _rtn_module(layer.get_submodule(n), spec, full(n)))
        runner.advance(layer)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


# ---------------------------------------------------------------------------------------------- save / load

def checkpoint_format(model: nn.Module) -> str:
    """"gptq", "awq" or "lab": the layout save_quantized writes for this quantized model."""
    qc = getattr(model, "quantization", None) or {}
    o = qc.get("options", {})
    if (qc.get("method") in ("rtn", "gptq") and o.get("act_bits") is None and not o.get("rotate")
            and o.get("kv_bits") is None):
        return "gptq"
    if qc.get("method") == "awq":
        return "awq"
    return "lab"


def save_quantized(model: nn.Module, path: str, max_shard_bytes: Optional[int] = None, *,
                   overwrite: bool = False, fmt: Optional[str] = None, flag: str = "path") -> str:
    """Write a quantized model (format: `fmt` or checkpoint_format(model)); return the format written.

    `path` follows model.weights.save_model: a directory someone else wrote is refused unless
    overwrite; over an earlier save of ours, stale weight files are removed.
    """
    from model.weights import save_model
    from quant import formats

    qc = getattr(model, "quantization", None)
    if qc is None:
        raise QuantizationError("model is not quantized; call quant.quantize(model, ...) first")
    fmt = fmt or checkpoint_format(model)
    if fmt == "lab":
        save_model(model, path, max_shard_bytes=max_shard_bytes, overwrite=overwrite, flag=flag,
                   extra_config={CONFIG_KEY: qc})
        return fmt
    if fmt != checkpoint_format(model):
        raise QuantizationError(f"a {qc.get('method')} model cannot be written in the {fmt} layout")
    o = qc["options"]
    state = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            packed = (formats.pack_gptq(mod.qweight, mod.scales, mod.zeros, mod.g_idx, mod.bits) if fmt == "gptq"
                      else formats.pack_awq(mod.qweight, mod.scales, mod.zeros))
            state.update({f"{name}.{k}": v for k, v in packed.items()})
    quant_names = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for k, v in model.state_dict().items():
        if k.rpartition(".")[0] not in quant_names or k.endswith(".bias"):
            state[k] = v
    hf = formats.hf_quant_config(fmt, o["bits"], o["group_size"], o.get("sym", False), o.get("act_order", False),
                                 o.get("percdamp", 0.01))
    save_model(model, path, max_shard_bytes=max_shard_bytes, overwrite=overwrite, flag=flag,
               extra_config={CONFIG_KEY: hf}, state=state)
    return fmt


def quantization_config(path: str) -> Optional[dict]:
    """config.json's quantization_config of checkpoint directory `path`, or None."""
    from model.config import read_json

    cfg = os.path.join(os.fspath(path), "config.json")
    raw = read_json(cfg, QuantizationError) if os.path.isfile(cfg) else None
    qc = raw.get(CONFIG_KEY) if isinstance(raw, dict) else None
    return qc if isinstance(qc, dict) else None


_KEEP_DTYPE = ("scales", "weight_scale", "input_rotation")  # stored precision is part of the format


def _empty_lab(method: str, qc: dict, name: str, lin: nn.Linear) -> nn.Module:
    """The empty (meta) module a lab-format checkpoint stores for layer `name`."""
    kw = dict(bias=lin.bias is not None, device="meta", dtype=lin.weight.dtype)
    if method == "int8_weight_only":
        return Int8WeightOnlyLinear(lin.in_features, lin.out_features, **kw)
    o = resolve_options(method, qc.get("options", {}))
    if method == "fp8":
        return FP8Linear(lin.in_features, lin.out_features, o["per_row"], o["act"], **kw)
    bits, gs, sym, act_bits = int_spec(method, o)
    rotation = bool(qc.get("rotated")) and name.endswith("mlp.down_proj")
    return QuantLinear(lin.in_features, lin.out_features, bits, check_group_size(gs, lin.in_features, name),
                       sym, act_bits, rotation=rotation, **kw)


def load_quantized(path: str, device="cpu", dtype=None) -> nn.Module:
    """Load a quantized checkpoint: lab, GPTQ or AWQ layout (by config.json's quantization_config).

    dtype (default: the checkpoint's) applies to floating-point tensors only; codes and the
    stored scales keep their dtypes. Any mismatch between tensors and config is one QuantizationError.
    """
    from model.config import ConfigError, ModelConfig, read_json
    from model.device import DTYPES
    from model.llama import Transformer
    from model.weights import check_finite, open_safetensors, weight_files
    from quant import formats

    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise QuantizationError(f"no config.json in {path}; expected a quantized checkpoint directory")
    raw = read_json(cfg_path, QuantizationError)
    qc = raw.get(CONFIG_KEY) if isinstance(raw, dict) else None
    kind = qc.get("quant_method") if isinstance(qc, dict) else None
    if kind not in ("lab", "gptq", "awq"):
        raise QuantizationError(f"{cfg_path} has no lab quantization_config (nor a gptq/awq one); "
                                "load it with model.weights.load_model instead")
    try:
        config = ModelConfig.from_hf_config(raw)
    except ConfigError as e:
        raise QuantizationError(f"{cfg_path}: {e}") from None
    if isinstance(dtype, str):
        from model.device import UsageError, parse_dtype
        try:
            dtype = parse_dtype(dtype, flag="dtype")
        except UsageError as e:
            raise QuantizationError(str(e)) from None
    dtype = dtype or DTYPES.get(config.torch_dtype, torch.float32)
    files = weight_files(path, QuantizationError)
    with torch.device("meta"):
        model = Transformer(config)
    packed: dict[str, nn.Linear] = {}
    if kind == "lab":
        if qc.get("version") != FORMAT_VERSION:
            raise QuantizationError(f"quantization format version {qc.get('version')} is not {FORMAT_VERSION}; "
                                    "re-export with this code")
        _method(qc.get("method"))
        for parent, attr, name, lin in targets(model, qc.get("skip", DEFAULT_SKIP)):
            setattr(parent, attr, _empty_lab(qc["method"], qc, name, lin))
    else:
        for parent, attr, name, lin in targets(model, ()):
            if f"{name}.qweight" in files:
                packed[name] = lin
    expected = dict(model.state_dict())
    for name in packed:
        expected.pop(f"{name}.weight")
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    keys, unpack = formats.FORMATS.get(kind, ((), None))
    wanted = set(expected) | {f"{n}.{k}" for n in packed for k in keys}
    optional = {f"{n}.g_idx" for n in packed}
    present = set(files) - {n for n in files if n.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        present.discard("lm_head.weight")
    missing, unexpected = sorted(wanted - present - optional), sorted(present - wanted)
    if missing or unexpected:
        raise QuantizationError(f"checkpoint {path} does not match its config: missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}")
    by_file: dict[str, list[str]] = {}
    for name in sorted(wanted & present):
        by_file.setdefault(files[name], []).append(name)
    raw_t = {}
    for fname, names in by_file.items():
        with open_safetensors(fname, QuantizationError) as f:
            for name in names:
                raw_t[name] = (f.get_tensor(name), fname)
    state = {}
    for name, ref in expected.items():
        t, fname = raw_t[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise QuantizationError(f"tensor {name} in {fname}: expected shape {tuple(ref.shape)}, found "
                                    f"{tuple(t.shape)}")
        if ref.is_floating_point() != t.is_floating_point() or (not ref.is_floating_point() and t.dtype != ref.dtype) \
                or (ref.dtype == torch.float8_e4m3fn) != (t.dtype == torch.float8_e4m3fn):
            raise QuantizationError(f"tensor {name} in {fname} has dtype {t.dtype}; expected {ref.dtype}")
        if t.is_floating_point() and t.dtype != torch.float8_e4m3fn:
            if not name.endswith(_KEEP_DTYPE):
                t = t.to(dtype)
            check_finite(t, name, fname, t.dtype, QuantizationError)
        state[name] = t.to(device)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for name, lin in packed.items():
        tensors = {k: raw_t[f"{name}.{k}"][0] for k in keys if f"{name}.{k}" in raw_t}
        q, scales, zeros, g_idx = unpack(tensors, qc.get("bits"), qc.get("group_size", -1), lin.in_features,
                                         lin.out_features, name)
        gs = lin.in_features if qc.get("group_size", -1) == -1 else qc["group_size"]
        mod = QuantLinear(lin.in_features, lin.out_features, qc["bits"], gs, bool(qc.get("sym", False)),
                          bias=lin.bias is not None, device="meta", dtype=dtype)
        _replace(model, name, mod)
        state.update({f"{name}.qweight": q.to(device), f"{name}.scales": scales.to(device),
                      f"{name}.zeros": zeros.to(device), f"{name}.g_idx": g_idx.to(device)})
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    kv_bits = qc.get("options", {}).get("kv_bits") if kind == "lab" else None
    if kv_bits is not None:
        from cache.kv_quant import install_kv_quant
        install_kv_quant(model, kv_bits)
    model.quantization = qc if kind == "lab" else {
        "quant_method": "lab", "version": FORMAT_VERSION, "skip": [],
        "method": "awq" if kind == "awq" else "gptq", "rotated": False,
        "options": ({"bits": qc["bits"], "group_size": qc.get("group_size", -1), "n_grid": 20} if kind == "awq" else
                    {**METHODS["gptq"].defaults, "bits": qc["bits"], "group_size": qc.get("group_size", -1),
                     "sym": bool(qc.get("sym", False)), "act_order": bool(qc.get("desc_act", False))}),
        "source": qc}
    return model.eval()


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the quantized modules of a model (for reports)."""
    return [n for n, m in model.named_modules() if isinstance(m, (QuantLinear, FP8Linear, Int8WeightOnlyLinear))]
