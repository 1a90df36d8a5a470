"""ModelConfig: the one description of a Llama-family network.

Named presets carry the published shapes; `from_hf_config` reads a Hugging Face
`config.json` in either spelling (classic `rope_theta`/`rope_scaling`/`torch_dtype`
or transformers-5 `rope_parameters`/`dtype`); `to_hf_config` writes one back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional


class ConfigError(ValueError):
    """A config the model cannot run; the message is one line saying what to do."""


# The architectures and their switches live in model/arch.py (one model, configured).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3", "phi", "mixtral")
# Keys a llama3 rope_scaling dict must hold (Llama 3.1 long-context frequency scaling).
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 4096  # hidden size (HF: hidden_size)
    n_layers: int = 32
    n_heads: int = 32  # query heads
    # Key/value heads; fewer than n_heads means grouped-query attention (GQA),
    # each kv head serving n_heads // n_kv_heads query heads. None -> n_heads.
    n_kv_heads: Optional[int] = None
    intermediate_size: int = 11008  # SwiGLU hidden width (gate/up output size)
    norm_eps: float = 1e-5  # RMSNorm epsilon added to mean(x^2)
    rope_theta: float = 10000.0  # RoPE base wavelength
    # None for plain RoPE, or a llama3 dict {factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings} (Llama 3.1 scaling).
    rope_scaling: Optional[dict] = None
    max_seq_len: int = 2048  # longest context (HF: max_position_embeddings)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens.weight
    torch_dtype: str = "float32"  # dtype the checkpoint was saved in
    head_dim: Optional[int] = None  # derived: dim // n_heads unless given
    bos_token_id: Optional[int] = 1
    eos_token_id: Any = 2  # int or list of ints (Llama 3 has several)
    # Architecture switches (model/arch.py reads them from config.json; defaults are Llama).
    arch: str = "llama"  # HF model_type the checkpoint names follow
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2, Phi-2)
    out_bias: bool = False  # o_proj, the MLP and lm_head carry biases (Phi-2)
    norm_type: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm with bias, Phi-2)
    hidden_act: str = "silu"  # MLP activation; gelu_new = tanh-approximated GELU (Phi-2)
    gated_mlp: bool = True  # SwiGLU down(act(gate x) * up x); False: down(act(up x)) (Phi-2)
    parallel_block: bool = False  # x + attn(ln(x)) + mlp(ln(x)), one norm per block (Phi-2)
    rotary_dim: Optional[int] = None  # RoPE on the first rotary_dim channels of a head; None -> head_dim
    # Keys a query at position i sees: positions > i - sliding_window (Mistral); None = all.
    sliding_window: Optional[int] = None
    n_experts: int = 0  # > 0: a mixture of experts replaces the MLP (Mixtral, model/moe.py)
    n_experts_per_tok: int = 2  # experts each token is routed to (top-k of the router)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                     "max_seq_len") + (("head_dim",) if self.head_dim is not None else ()):
            _check_number(name, getattr(self, name), int)
        _check_number("norm_eps", self.norm_eps, float)
        _check_number("rope_theta", self.rope_theta, float)
        if self.head_dim is None:
            if self.dim % self.n_heads != 0:
                raise ConfigError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}),"
                                  " or give head_dim explicitly")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                              f"({self.n_kv_heads}) for grouped-query attention")
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)
        if self.rotary_dim is None:
            self.rotary_dim = self.head_dim
        if not (isinstance(self.rotary_dim, int) and 0 < self.rotary_dim <= self.head_dim
                and self.rotary_dim % 2 == 0):
            raise ConfigError(f"rotary_dim must be an even integer in 2..head_dim ({self.head_dim}), "
                              f"got {self.rotary_dim!r}")
        if self.norm_type not in ("rms", "layer"):
            raise ConfigError(f"norm_type must be 'rms' or 'layer', got {self.norm_type!r}")
        if self.sliding_window is not None:
            _check_number("sliding_window", self.sliding_window, int)
        if self.n_experts:
            _check_number("n_experts", self.n_experts, int)
            if not 1 <= self.n_experts_per_tok <= self.n_experts:
                raise ConfigError(f"n_experts_per_tok must be in 1..n_experts ({self.n_experts}), "
                                  f"got {self.n_experts_per_tok!r}")

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        """Return the preset called `name` (see PRESETS for the list)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    @classmethod
    def from_hf_config(cls, config: "dict | str | os.PathLike") -> "ModelConfig":
        """Build from a Hugging Face config dict, config.json path, or checkpoint directory."""
        if not isinstance(config, dict):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path}; pass a checkpoint directory "
                                  "holding config.json")
            config = read_json(path, ConfigError)
            if not isinstance(config, dict):
                raise ConfigError(f"{path} holds a JSON {type(config).__name__}, expected an object "
                                  "of Hugging Face config fields")
            try:
                return cls.from_hf_config(config)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        from model import arch

        c = dict(config)
        fields = arch.read_fields(c, ConfigError)  # model_type / architectures; unknown -> error
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "vocab_size"):
            if key not in c:
                raise ConfigError(f"config.json lacks required key {key!r}")
            _check_number(key, c[key], int)
        for key, kind in HF_OPTIONAL_NUMBERS.items():
            if c.get(key) is not None:
                _check_number(key, c[key], kind)
        _check_token_ids(c)
        theta, scaling = _read_rope(c)
        params = c.get("rope_parameters") or c.get("rope_scaling") or {}
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        factor = arch.partial_rotary_factor(c, params)
        if factor != 1.0:
            fields["rotary_dim"] = int(head_dim * factor)  # as transformers: int(head_dim * factor)
        dtype = c.get("dtype") or c.get("torch_dtype") or "float32"
        return cls(
            vocab_size=c["vocab_size"],
            dim=c["hidden_size"],
            n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"],
            n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            intermediate_size=c["intermediate_size"],
            norm_eps=(c.get("layer_norm_eps", 1e-5) if fields.get("norm_type") == "layer"  # Phi-2's LayerNorm
                      else c.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=c.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            torch_dtype=str(dtype).replace("torch.", ""),
            head_dim=c.get("head_dim"),
            bos_token_id=c.get("bos_token_id"),
            eos_token_id=c.get("eos_token_id"),
            **fields,
        )

    def to_hf_config(self) -> dict:
        """Return a config.json dict that transformers' LlamaConfig loads (both spellings of rope).

        Llama and Mistral layouts only (save_model writes Llama names); ConfigError otherwise."""
        if self.arch not in ("llama", "mistral") or self.sliding_window is not None:
            raise ConfigError(f"writing a {self.arch} checkpoint (sliding_window={self.sliding_window}) "
                              "is not implemented; only the Llama layout is written")
        rope_parameters = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling is not None:
            rope_parameters.update(self.rope_scaling)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": self.torch_dtype,
        }

    def replace(self, **changes) -> "ModelConfig":
        """Return a copy with `changes` applied (derived fields recomputed unless given)."""
        if "head_dim" not in changes and ("dim" in changes or "n_heads" in changes):
            changes["head_dim"] = None
        if "head_dim" in changes and "rotary_dim" not in changes and self.rotary_dim == self.head_dim:
            changes["rotary_dim"] = None  # full rotary stays full (was: a new head_dim kept the old width)
        return dataclasses.replace(self, **changes)


# Optional HF fields that must be positive numbers when present (int: a count, float: any real).
HF_OPTIONAL_NUMBERS = {"num_key_value_heads": int, "head_dim": int, "max_position_embeddings": int,
                       "rms_norm_eps": float, "layer_norm_eps": float, "rope_theta": float}


def read_json(path: str, error: type):
    """Parse the JSON file at path; raise `error` naming the file when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"cannot read {path} as JSON: {e}") from None


def _check_number(field: str, value, kind: type) -> None:
    """Raise ConfigError naming field unless value is a positive finite int (kind=int) or real number."""
    ok_type = int if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not 0 < value < float("inf"):
        what = "a positive integer" if kind is int else "a positive finite number"
        raise ConfigError(f"{field} must be {what}, got {value!r}")


def _check_token_ids(c: dict) -> None:
    """bos_token_id: an int >= 0 or null; eos_token_id: that, or a non-empty list of them."""
    for key in ("bos_token_id", "eos_token_id"):
        value = c.get(key)
        ids = value if key == "eos_token_id" and isinstance(value, list) and value else [value]
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                         for i in ids):
            raise ConfigError(f"{key} must be a non-negative integer (eos: or a list of them) or null, "
                              f"got {value!r}")


# Keys of a longrope (Phi-3 "su") scaling dict once read (model/layers.precompute_rope uses them).
LONGROPE_KEYS = ("short_factor", "long_factor", "original_max_position_embeddings", "attention_factor")


def _check_rope_scaling(scaling: dict) -> dict:
    """Validate a llama3 or longrope rope_scaling dict; return it with only that type's keys."""
    rope_type = scaling.get("rope_type", scaling.get("type", "llama3"))
    if rope_type in ("longrope", "su"):
        missing = [k for k in LONGROPE_KEYS if k not in scaling]
        if missing:
            raise ConfigError(f"longrope rope_scaling lacks {missing}; expected keys {list(LONGROPE_KEYS)}")
        out = {k: scaling[k] for k in LONGROPE_KEYS}
        for k in ("short_factor", "long_factor"):
            if not (isinstance(out[k], list) and out[k] and all(isinstance(f, (int, float)) and f > 0
                                                                 for f in out[k])):
                raise ConfigError(f"longrope {k} must be a non-empty list of positive numbers")
            out[k] = [float(f) for f in out[k]]
        _check_number("original_max_position_embeddings", out["original_max_position_embeddings"], int)
        _check_number("attention_factor", out["attention_factor"], float)
        out["rope_type"] = "longrope"
        return out
    if rope_type != "llama3":
        raise ConfigError(f"unsupported rope type {rope_type!r}; only 'default' and 'llama3' "
                          "RoPE are implemented")
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ConfigError(f"llama3 rope_scaling lacks {missing}; expected keys {list(LLAMA3_ROPE_KEYS)}")
    out = {k: scaling[k] for k in LLAMA3_ROPE_KEYS}
    out["rope_type"] = "llama3"
    return out


def _read_rope(c: dict) -> tuple[float, Optional[dict]]:
    """Return (rope_theta, rope_scaling or None) from either HF spelling."""
    classic = c.get("rope_parameters") is None  # top-level rope_theta + rope_scaling
    params = (c.get("rope_scaling") or {}) if classic else c["rope_parameters"]
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling/rope_parameters must be an object or null, got {params!r}")
    theta = c.get("rope_theta", 10000.0) if classic else params.get("rope_theta", c.get("rope_theta", 10000.0))
    _check_number("rope_theta", theta, float)
    rope_type = params.get("rope_type", params.get("type", "default")) if params else "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type in ("longrope", "su"):  # Phi-3: the attention factor follows transformers' rule
        params = dict(params)
        orig = params.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))
        _check_number("original_max_position_embeddings", orig, int)
        params["original_max_position_embeddings"] = orig
        if params.get("attention_factor") is None:
            factor = params.get("factor") or c.get("max_position_embeddings", orig) / orig
            params["attention_factor"] = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        return float(theta), _check_rope_scaling(params)
    if rope_type != "llama3":
        raise ConfigError(f"unsupported rope type {rope_type!r}; only 'default' and 'llama3' "
                          "RoPE are implemented")
    return float(theta), _check_rope_scaling(params)


_LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192, "rope_type": "llama3"}

# Published shapes (config.json of each model on the Hugging Face Hub).
PRESETS: dict[str, dict] = {
    # Small CPU test model; vocab 512 so a ByteTokenizer (258 ids) fits.
    "tiny": dict(vocab_size=512, dim=64, n_layers=4, n_heads=4, n_kv_heads=2,
                 intermediate_size=192, norm_eps=1e-5, max_seq_len=256),  # 192: TRT-LLM W8A16 needs multiples of 64
    "llama2-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      intermediate_size=11008, norm_eps=1e-5, rope_theta=10000.0,
                      max_seq_len=4096, torch_dtype="float16"),
    "llama3-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      intermediate_size=14336, norm_eps=1e-5, rope_theta=500000.0,
                      max_seq_len=8192, torch_dtype="bfloat16", bos_token_id=128000,
                      eos_token_id=128001),
    "llama3.1-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                        intermediate_size=14336, norm_eps=1e-5, rope_theta=500000.0,
                        rope_scaling=dict(_LLAMA31_SCALING), max_seq_len=131072,
                        torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128001),
    "llama3-70b": dict(vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                       intermediate_size=28672, norm_eps=1e-5, rope_theta=500000.0,
                       max_seq_len=8192, torch_dtype="bfloat16", bos_token_id=128000,
                       eos_token_id=128001),
    # Mistral-7B-v0.1 (v0.3 differs: vocab 32768, rope_theta 1e6).
    "mistral-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       intermediate_size=14336, norm_eps=1e-5, rope_theta=10000.0,
                       max_seq_len=32768, torch_dtype="bfloat16"),
}
