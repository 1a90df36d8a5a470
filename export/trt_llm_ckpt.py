"""Our Llama -> a TensorRT-LLM checkpoint directory (what `trtllm-build --checkpoint_dir` reads).

Everything below was read from TensorRT-LLM's source (NVIDIA/TensorRT-LLM), not guessed:
  tensorrt_llm/models/llama/convert.py   load_weights_from_hf_model, get_prefix_and_param_name_map
  tensorrt_llm/models/llama/config.py    LLaMAConfig fields (rotary_base, rotary_scaling, ...)
  tensorrt_llm/models/convert_utils.py   get_tllm_linear_weight, dup_kv_weight, split
  tensorrt_llm/models/modeling_utils.py  from_checkpoint -> preprocess_weights -> W8A16 path
  tensorrt_llm/quantization/functional.py  preprocess_weights_for_mixed_gemm
  cpp/tensorrt_llm/thop/weightOnlyQuantOp.cpp  symmetric_quantize_last_axis_of_batched_matrix

Directory: config.json + rank{r}.safetensors for r in 0..tp_size-1.

Tensor names per rank (HF name -> TRT-LLM name; "col" = split along the output dim,
"row" = split along the input dim, as the converter does):
  model.embed_tokens.weight                 -> transformer.vocab_embedding.weight   (full copy;
                                               use_parallel_embedding is false)
  layers.{i}.input_layernorm.weight          -> transformer.layers.{i}.input_layernorm.weight
  layers.{i}.self_attn.{q,k,v}_proj.weight   -> transformer.layers.{i}.attention.qkv.weight:
        cat(q_r, k_r, v_r) along the output dim, where q_r, k_r, v_r are rank r's
        slices of each (kv heads duplicated first when n_kv_heads < tp_size)
  layers.{i}.self_attn.o_proj.weight         -> transformer.layers.{i}.attention.dense.weight (row)
  layers.{i}.post_attention_layernorm.weight -> transformer.layers.{i}.post_layernorm.weight
  layers.{i}.mlp.gate_proj.weight            -> transformer.layers.{i}.mlp.fc.weight   (col)
  layers.{i}.mlp.up_proj.weight              -> transformer.layers.{i}.mlp.gate.weight (col)
        (yes, swapped: TRT-LLM's "gate" is HF's up_proj; convert.py's param_name_map)
  layers.{i}.mlp.down_proj.weight            -> transformer.layers.{i}.mlp.proj.weight (row)
  model.norm.weight                          -> transformer.ln_f.weight
  lm_head.weight (or the tied embedding)     -> lm_head.weight (vocab padded with zero rows to a
                                                multiple of tp_size, then col split)

Float weights keep HF's (out_features, in_features) layout, in config["dtype"].

Mistral and Qwen2 (read at NVIDIA/TensorRT-LLM commit 0428c18828880e7c60c13cc5cc0794bbbc05c0a3:
tensorrt_llm/models/llama/config.py, tensorrt_llm/models/qwen/{config,convert}.py, and
qwen/utils.py get_qwen_key_list at 65b31db1b401d3752b8ebe7c29093cbfb6af04b7):
  Mistral  LLaMAConfig.from_hugging_face with architecture = hf architectures[0]
           ("MistralForCausalLM", which TensorRT-LLM's MODEL_MAP sends to LLaMAForCausalLM):
           the tensors and keys above, unchanged. No sliding-window key is read from the HF
           config there: the window is a runtime setting of the engine (max_attention_window_size),
           so a windowed Mistral is written with its window in config.json's lab_export only.
  Qwen2    QWenConfig: architecture "Qwen2ForCausalLM", qwen_type "qwen2", attn_bias true,
           mlp_bias false. Tensors as Llama's (get_qwen_key_list's qwen2 list: up_proj -> mlp.gate,
           gate_proj -> mlp.fc, the same swap) plus
  layers.{i}.self_attn.{q,k,v}_proj.bias     -> transformer.layers.{i}.attention.qkv.bias:
        cat(bq_r, bk_r, bv_r), split like the weights (kv biases duplicated by dup_kv_bias
        when n_kv_heads < tp_size); never quantized.

W8A16 (quant_algo "W8A16", weight-only int8, per output channel), for each of
qkv/dense/fc/gate/proj (never lm_head or the embedding):
  <name>.weight             int8 (in_features, out_features_r): rank r's fp weight is
                            transposed, quantized along its last axis, then laid out by
                            `preprocess_weights_for_mixed_gemm` for the GPU that builds the
                            engine (an SM-specific permutation; see preprocess_int8_weight).
                            modeling_utils' W8A16 preprocess leaves int8 tensors as they are,
                            so the layout must already match the build GPU (--sm).
  <name>.per_channel_scale  (out_features_r,) in the model dtype, scale = max|w_col| / 127.
The CUTLASS layout needs in_features % 16 == 0 (% 64 below SM90) and
out_features_r % 8 == 0 (preprocess_weights_for_mixed_gemm asserts both); the tiny
preset uses intermediate_size 192 so that the embedded model exports as W8A16.

W4A16_GPTQ, W4A16_AWQ, FP8 and W8A8 SmoothQuant (per channel / per token) checkpoints of
quant/-quantized models: the Linear tensors are export/trt_llm_quant.py's (names and layouts
there); everything else is written by convert_rank above from the dequantized state.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from export.common import ExportError
from model.device import SHORT_NAMES, dtype_name
from export.trt_llm_quant import ALGOS as QUANT_ALGO_TABLE
from quant.int8 import quantize_int8_per_channel

FORMAT_VERSION = 1  # of this exporter's output; bump when names/layout change
QUANT_ALGOS = {"none": None, "int8": "W8A16", **{k: v[0] for k, v in QUANT_ALGO_TABLE.items()}}
QUANTIZED = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
QUANTIZED_WEIGHTS = tuple(n + ".weight" for n in QUANTIZED)

# preprocess_weights_for_mixed_gemm, int8 weights with 16-bit activations: rows (the
# input dim) are permuted in blocks of 16 so one ldmatrix feeds an MMA (permutation "16_8").
_ROW_PERM_16_8 = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]


def _tp_checks(config, tp: int) -> None:
    """Raise ExportError unless the converter's tensor-parallel splits divide evenly."""
    if tp < 1:
        raise ExportError(f"--tp_size must be >= 1, got {tp}")
    checks = [("num_attention_heads", config.n_heads), ("intermediate_size", config.intermediate_size)]
    for name, value in checks:
        if value % tp:
            raise ExportError(f"{name}={value} is not divisible by --tp_size={tp}")
    kv = config.n_kv_heads
    if kv < tp and tp % kv:
        raise ExportError(f"num_key_value_heads={kv} < --tp_size={tp} needs tp_size to be a "
                          "multiple of it (kv heads are duplicated)")
    if kv >= tp and kv % tp:
        raise ExportError(f"num_key_value_heads={kv} is not divisible by --tp_size={tp}")


def _int8_checks(config, tp: int, sm: int) -> None:
    """Raise ExportError when a W8A16 GEMM shape breaks the CUTLASS layout's asserts."""
    d, inter = config.head_dim, config.intermediate_size
    qkv_out = (config.n_heads + 2 * max(config.n_kv_heads, tp)) * d // tp
    k_mult = 64 if sm < 90 or sm >= 120 else 16
    gemms = {  # name: (in_features, out_features per rank)
        "attention.qkv": (config.dim, qkv_out),
        "attention.dense": (config.n_heads * d // tp, config.dim),
        "mlp.fc/gate": (config.dim, inter // tp),
        "mlp.proj": (inter // tp, config.dim),
    }
    for name, (k, n) in gemms.items():
        if k % k_mult or n % 8:
            raise ExportError(
                f"--quant int8: {name} is {k} in x {n} out per rank; TensorRT-LLM's W8A16 "
                f"layout (sm {sm}) needs in % {k_mult} == 0 and out % 8 == 0, so this model "
                f"cannot be exported as W8A16 at tp_size {tp}")


def quantization_block(quant: str, o: Optional[dict] = None) -> dict:
    """config.json's `quantization` (TensorRT-LLM's QuantConfig fields) for --quant and the model's options."""
    q = {"quant_algo": QUANT_ALGOS[quant], "kv_cache_quant_algo": None}
    if quant in ("w4a16_gptq", "w4a16_awq"):
        q.update(group_size=o["group_size"], has_zero_point=True, pre_quant_scale=quant == "w4a16_awq")
    if quant == "w8a8_sq":
        q["smoothquant_val"] = o["alpha"]
    if quant in QUANT_ALGO_TABLE:
        q["exclude_modules"] = ["lm_head"]
    return q


def trtllm_config(config, dtype: torch.dtype, tp: int, quant: str, revision: str,
                  sm: Optional[int], quant_options: Optional[dict] = None) -> dict:
    """The config.json dict (PretrainedConfig + LLaMAConfig keys) for our ModelConfig."""
    arch = getattr(config, "arch", "llama")
    if arch not in TRT_ARCHITECTURES:
        raise ExportError(f"no TensorRT-LLM checkpoint writer for {arch}; supported: "
                          f"{', '.join(TRT_ARCHITECTURES)}")
    scaling = None
    if config.rope_scaling is not None:
        scaling = dict(config.rope_scaling)
        scaling["type"] = scaling["rope_type"] = "llama3"  # older releases read "type"
    extra = {"qwen_type": "qwen2"} if arch == "qwen2" else {}
    return {
        **extra,
        "architecture": TRT_ARCHITECTURES[arch],
        "dtype": dtype_name(dtype),
        "logits_dtype": "float32",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_size": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_seq_len,
        "hidden_act": "silu",
        "norm_epsilon": config.norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": config.rope_theta,
        "rotary_scaling": scaling,
        "attn_bias": bool(config.qkv_bias),
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        # lm_head.weight is always written (the converter copies a tied embedding too).
        "share_embedding_table": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": quantization_block(quant, quant_options),
        # Ours, ignored by TensorRT-LLM: who wrote this and in which layout.
        "lab_export": {"format_version": FORMAT_VERSION, "git_revision": revision,
                       "int8_layout_sm": sm if quant == "int8" else None,
                       "int4_layout_sm": sm if quant == "w4a16_gptq" else None,
                       "sliding_window": config.sliding_window},
    }


def preprocess_int8_weight(qt: torch.Tensor, sm: int) -> torch.Tensor:
    """TensorRT-LLM's preprocess_weights_for_mixed_gemm for int8 weights, fp16/bf16 activations.

    qt: int8 (K=in, N=out), the transposed quantized weight. Steps, by SM (as in
    tensorrt_llm/quantization/functional.py): SM75-90 and SM120+ (which reuses SM80)
    permute rows in blocks of 16, store column-major, (below SM90 only) interleave
    pairs of columns in 64-row tiles, then add 128 (int8 -> biased uint8 bits) and
    swap the middle two bytes of every 4. SM100/103 only store column-major.
    Returns int8 of the same (K, N) shape.
    """
    assert qt.dtype == torch.int8 and qt.dim() == 2, (qt.dtype, qt.shape)
    sm = 80 if sm >= 120 else sm
    interleave = sm not in (100, 103)
    K, N = qt.shape
    t = qt
    if interleave:
        rows = torch.arange(K).view(-1, 16)[:, _ROW_PERM_16_8].reshape(-1)  # (K,)
        t = t[rows]
    t = t.t().contiguous().reshape(K, N)  # column-major bytes in a (K, N) buffer
    if interleave:
        if sm < 90:
            t = t.reshape(N // 2, 2, K // 64, 64).permute(0, 2, 1, 3).reshape(K, N)
        t = (t.view(torch.uint8).to(torch.int16) + 128).to(torch.uint8).view(torch.int8)
        t = t.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(K, N)
    return t.contiguous()


def unpreprocess_int8_weight(t: torch.Tensor, sm: int) -> torch.Tensor:
    """Inverse of preprocess_int8_weight: the plain int8 (K, N) transposed weight."""
    sm = 80 if sm >= 120 else sm
    interleave = sm not in (100, 103)
    K, N = t.shape
    if interleave:
        t = t.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(K, N)  # the swap is its own inverse
        t = (t.view(torch.uint8).to(torch.int16) - 128).to(torch.int8)
        if sm < 90:
            t = t.reshape(N // 2, K // 64, 2, 64).permute(0, 2, 1, 3).reshape(K, N)
    t = t.reshape(N, K).t()  # back to row-major (K, N)
    if interleave:
        inv = torch.empty(16, dtype=torch.long)
        inv[torch.tensor(_ROW_PERM_16_8)] = torch.arange(16)
        rows = torch.arange(K).view(-1, 16)[:, inv].reshape(-1)
        t = t[rows]
    return t.contiguous()


# Our model_type -> TensorRT-LLM's "architecture" (its MODEL_MAP key) for the archs written here.
TRT_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _split(w: torch.Tensor, tp: int, r: int, dim: int) -> torch.Tensor:
    return torch.chunk(w, tp, dim=dim)[r].contiguous()


def _dup_kv(w: torch.Tensor, n_kv: int, tp: int) -> torch.Tensor:
    """Repeat each kv head tp // n_kv times (rows grouped by head), as dup_kv_weight (and, for a
    1-D bias, dup_kv_bias) does."""
    if w.dim() == 1:
        return _dup_kv(w[:, None], n_kv, tp)[:, 0]
    reps = tp // n_kv
    head = w.shape[0] // n_kv
    return w.view(n_kv, 1, head, -1).expand(n_kv, reps, head, w.shape[1]).reshape(-1, w.shape[1])


def _linear(out: dict, name: str, w: torch.Tensor, dtype, quant: str, sm: Optional[int]) -> None:
    """Store one rank's Linear weight w (out, in) as float, or as W8A16 int8 + per_channel_scale."""
    if quant == "int8":
        q, scale = quantize_int8_per_channel(w.to(dtype), scale_dtype=dtype)  # (out, in), (out,)
        out[name + ".weight"] = preprocess_int8_weight(q.t().contiguous(), sm)  # (in, out)
        out[name + ".per_channel_scale"] = scale.contiguous()
    else:
        out[name + ".weight"] = w.to(dtype).contiguous()


def convert_rank(state: dict, config, dtype: torch.dtype, tp: int, rank: int, quant: str = "none",
                 sm: Optional[int] = None) -> dict:
    """TensorRT-LLM tensors of one rank from an HF-named fp state dict (names in the module doc)."""
    n_kv = config.n_kv_heads
    out: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        hf, tl = f"model.layers.{i}.", f"transformer.layers.{i}."
        q = state[hf + "self_attn.q_proj.weight"]
        k = state[hf + "self_attn.k_proj.weight"]
        v = state[hf + "self_attn.v_proj.weight"]
        if n_kv < tp:
            k, v = _dup_kv(k, n_kv, tp), _dup_kv(v, n_kv, tp)
        qkv = torch.cat([_split(q, tp, rank, 0), _split(k, tp, rank, 0), _split(v, tp, rank, 0)])
        _linear(out, tl + "attention.qkv", qkv, dtype, quant, sm)  # (q+k+v rows per rank, dim)
        if config.qkv_bias:  # Qwen2: the biases fused and split like the weights, never quantized
            bq, bk, bv = (state[hf + f"self_attn.{n}_proj.bias"] for n in "qkv")
            if n_kv < tp:
                bk, bv = _dup_kv(bk, n_kv, tp), _dup_kv(bv, n_kv, tp)
            out[tl + "attention.qkv.bias"] = torch.cat(
                [_split(bq, tp, rank, 0), _split(bk, tp, rank, 0), _split(bv, tp, rank, 0)]).to(dtype)
        _linear(out, tl + "attention.dense", _split(state[hf + "self_attn.o_proj.weight"], tp, rank, 1),
                dtype, quant, sm)
        _linear(out, tl + "mlp.fc", _split(state[hf + "mlp.gate_proj.weight"], tp, rank, 0),
                dtype, quant, sm)
        _linear(out, tl + "mlp.gate", _split(state[hf + "mlp.up_proj.weight"], tp, rank, 0),
                dtype, quant, sm)
        _linear(out, tl + "mlp.proj", _split(state[hf + "mlp.down_proj.weight"], tp, rank, 1),
                dtype, quant, sm)
        out[tl + "input_layernorm.weight"] = state[hf + "input_layernorm.weight"].to(dtype)
        out[tl + "post_layernorm.weight"] = state[hf + "post_attention_layernorm.weight"].to(dtype)
    out["transformer.vocab_embedding.weight"] = state["model.embed_tokens.weight"].to(dtype)
    out["transformer.ln_f.weight"] = state["model.norm.weight"].to(dtype)
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    pad = -config.vocab_size % tp
    if pad:
        head = torch.nn.functional.pad(head, (0, 0, 0, pad))  # zero rows up to a multiple of tp
    out["lm_head.weight"] = _split(head.to(dtype), tp, rank, 0)
    if config.tie_word_embeddings:  # at tp 1 in the weights' dtype it would alias the embedding
        out["lm_head.weight"] = out["lm_head.weight"].clone()
    return {k: v.contiguous() for k, v in out.items()}


def write_checkpoint(model, out_dir: str, dtype: torch.dtype, tp: int = 1, quant: str = "none",
                     sm: int = 90, revision: str = "unknown", calib: Optional[torch.Tensor] = None) -> dict:
    """Write config.json and rank{r}.safetensors; return the config dict.

    quant in export/trt_llm_quant.py's ALGOS: `model` must be quantized by that quant/ method
    (its codes are written, never re-quantized); fp8 also needs calib (n, T) ids for the static
    activation scales."""
    if quant not in QUANT_ALGOS:
        raise ExportError(f"unknown --quant {quant!r}; expected one of {', '.join(QUANT_ALGOS)}")
    if dtype not in SHORT_NAMES:
        raise ExportError(f"unsupported dtype {dtype}")
    config = model.config
    _tp_checks(config, tp)
    if quant == "int8":
        if dtype == torch.float32:
            raise ExportError("--quant int8 (W8A16) needs --dtype float16 or bfloat16; "
                              "TensorRT-LLM's weight-only GEMM has no fp32 activations")
        _int8_checks(config, tp, sm)
    options, act_scales = None, None
    method = (getattr(model, "quantization", None) or {}).get("method")
    if method and quant not in QUANT_ALGO_TABLE:
        raise ExportError(f"--checkpoint is quantized ({method}); --quant {quant} exports float weights. "
                          f"Use the --quant matching it ({', '.join(QUANT_ALGO_TABLE)})")
    if quant in QUANT_ALGO_TABLE:
        from export import trt_llm_quant as tq

        options = tq.check_model(model, quant, dtype, tp, sm)
        if quant == "fp8":
            if calib is None:
                raise ExportError("--quant fp8 needs calibration ids for TensorRT-LLM's static activation scales")
            act_scales = tq.fp8_activation_scales(model, calib)
        state = {k: v.cpu() for k, v in tq.dequantized_state(model).items()}
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # a previous run's extra ranks would confuse trtllm-build
        if name.startswith("rank") and name.endswith(".safetensors"):
            os.remove(os.path.join(out_dir, name))
    cfg = trtllm_config(config, dtype, tp, quant, revision, sm, options)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for r in range(tp):
        if quant in QUANT_ALGO_TABLE:
            tensors = convert_rank(state, config, dtype, tp, r, "none", sm)
            for k in [k for k in tensors if k.endswith(QUANTIZED_WEIGHTS)]:
                del tensors[k]
            tensors.update(tq.quant_rank(model, quant, dtype, tp, r, sm, act_scales))
        else:
            tensors = convert_rank(state, config, dtype, tp, r, quant, sm)
        save_file(tensors, os.path.join(out_dir, f"rank{r}.safetensors"), metadata={"format": "pt"})
    return cfg


# ---------------------------------------------------------------------------------------
# Reading a checkpoint back: the schema it must satisfy, and the inverse conversion.


def expected_tensors(cfg: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) every rank file must hold, from config.json alone."""
    dtype = getattr(torch, cfg["dtype"])
    tp = cfg["mapping"]["tp_size"]
    h, d, inter = cfg["hidden_size"], cfg["head_size"], cfg["intermediate_size"]
    n_q, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    qkv_out = (n_q + 2 * max(n_kv, tp)) * d // tp
    vocab_r = (cfg["vocab_size"] + (-cfg["vocab_size"] % tp)) // tp
    algo = cfg["quantization"]["quant_algo"]
    int8 = algo == "W8A16"
    grouped = algo in {v[0] for v in QUANT_ALGO_TABLE.values()}
    exp = {
        "transformer.vocab_embedding.weight": ((cfg["vocab_size"], h), dtype),
        "transformer.ln_f.weight": ((h,), dtype),
        "lm_head.weight": ((vocab_r, h), dtype),
    }
    linears = {"attention.qkv": (qkv_out, h), "attention.dense": (h, n_q * d // tp),
               "mlp.fc": (inter // tp, h), "mlp.gate": (inter // tp, h), "mlp.proj": (h, inter // tp)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.layers.{i}."
        exp[p + "input_layernorm.weight"] = ((h,), dtype)
        exp[p + "post_layernorm.weight"] = ((h,), dtype)
        if cfg.get("attn_bias"):
            exp[p + "attention.qkv.bias"] = ((qkv_out,), dtype)
        if algo == QUANT_ALGO_TABLE["w8a8_sq"][0]:
            exp[p + "input_layernorm.scale_to_int"] = ((1,), torch.float32)
            exp[p + "post_layernorm.scale_to_int"] = ((1,), torch.float32)
        for name, (n_out, n_in) in linears.items():
            if grouped:
                from export.trt_llm_quant import expected_linear

                exp.update(expected_linear(p + name, algo, n_out, n_in, dtype, cfg["quantization"]))
            elif int8:
                exp[p + name + ".weight"] = ((n_in, n_out), torch.int8)
                exp[p + name + ".per_channel_scale"] = ((n_out,), dtype)
            else:
                exp[p + name + ".weight"] = ((n_out, n_in), dtype)
    return exp


REQUIRED_CONFIG_KEYS = (
    "architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_size", "intermediate_size",
    "max_position_embeddings", "hidden_act", "norm_epsilon", "position_embedding_type",
    "rotary_base", "rotary_scaling", "mapping", "quantization", "tie_word_embeddings")


def read_checkpoint(ckpt_dir: str) -> tuple[dict, list[dict]]:
    """Load config.json and every rank's tensors; raise ExportError if they break the schema."""
    path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"no config.json in {ckpt_dir}")
    with open(path) as f:
        cfg = json.load(f)
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ExportError(f"{path} lacks keys {missing}")
    exp = expected_tensors(cfg)
    ranks = []
    for r in range(cfg["mapping"]["world_size"]):
        fname = os.path.join(ckpt_dir, f"rank{r}.safetensors")
        if not os.path.isfile(fname):
            raise ExportError(f"missing {fname}")
        with safe_open(fname, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if set(tensors) != set(exp):
            raise ExportError(f"{fname}: missing {sorted(set(exp) - set(tensors))[:4]}, "
                              f"unexpected {sorted(set(tensors) - set(exp))[:4]}")
        for k, (shape, dtype) in exp.items():
            t = tensors[k]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ExportError(f"{fname}: {k} is {tuple(t.shape)} {t.dtype}, expected {shape} {dtype}")
        ranks.append(tensors)
    return cfg, ranks


def _merge_linear(ranks: list[dict], name: str, cfg: dict, dim: int) -> torch.Tensor:
    """Concatenate one Linear's rank slices back to (out, in) fp32 (dequantizing W8A16)."""
    parts = []
    for t in ranks:
        w = t[name + ".weight"]
        if cfg["quantization"]["quant_algo"] in {v[0] for v in QUANT_ALGO_TABLE.values()}:
            from export.trt_llm_quant import dequantize_linear

            w = dequantize_linear(t, name, cfg)
        elif w.dtype == torch.int8:
            sm = cfg["lab_export"]["int8_layout_sm"]
            q = unpreprocess_int8_weight(w, sm).t()  # (out, in)
            w = q.float() * t[name + ".per_channel_scale"].float()[:, None]
        parts.append(w.float())
    return torch.cat(parts, dim=dim)


def to_hf_state(cfg: dict, ranks: list[dict]) -> dict[str, torch.Tensor]:
    """Invert convert_rank: HF-named fp32 tensors (qkv/fc/gate de-fused, ranks merged)."""
    tp = cfg["mapping"]["tp_size"]
    d, n_q, n_kv = cfg["head_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    kv_r = max(n_kv, tp) * d // tp  # k (and v) rows per rank
    q_r = n_q * d // tp
    state = {}
    for i in range(cfg["num_hidden_layers"]):
        p, hf = f"transformer.layers.{i}.", f"model.layers.{i}."
        qs, ks, vs = [], [], []
        for r in range(tp):
            qkv = _merge_linear(ranks[r:r + 1], p + "attention.qkv", cfg, 0)
            q, k, v = torch.split(qkv, [q_r, kv_r, kv_r])
            qs.append(q), ks.append(k), vs.append(v)
        k, v = torch.cat(ks), torch.cat(vs)
        if n_kv < tp:  # undo the duplication: keep the first copy of each head
            k = k.view(n_kv, tp // n_kv, d, -1)[:, 0].reshape(n_kv * d, -1)
            v = v.view(n_kv, tp // n_kv, d, -1)[:, 0].reshape(n_kv * d, -1)
        if cfg.get("attn_bias"):
            bqs, bks, bvs = zip(*(torch.split(t[p + "attention.qkv.bias"].float(), [q_r, kv_r, kv_r])
                                  for t in ranks))
            bk, bv = torch.cat(bks), torch.cat(bvs)
            if n_kv < tp:
                bk, bv = bk.view(n_kv, tp // n_kv, d)[:, 0].reshape(-1), bv.view(n_kv, tp // n_kv, d)[:, 0].reshape(-1)
            state[hf + "self_attn.q_proj.bias"] = torch.cat(bqs)
            state[hf + "self_attn.k_proj.bias"], state[hf + "self_attn.v_proj.bias"] = bk, bv
        state[hf + "self_attn.q_proj.weight"] = torch.cat(qs)
        state[hf + "self_attn.k_proj.weight"] = k
        state[hf + "self_attn.v_proj.weight"] = v
        state[hf + "self_attn.o_proj.weight"] = _merge_linear(ranks, p + "attention.dense", cfg, 1)
        state[hf + "mlp.gate_proj.weight"] = _merge_linear(ranks, p + "mlp.fc", cfg, 0)
        state[hf + "mlp.up_proj.weight"] = _merge_linear(ranks, p + "mlp.gate", cfg, 0)
        state[hf + "mlp.down_proj.weight"] = _merge_linear(ranks, p + "mlp.proj", cfg, 1)
        state[hf + "input_layernorm.weight"] = ranks[0][p + "input_layernorm.weight"].float()
        state[hf + "post_attention_layernorm.weight"] = ranks[0][p + "post_layernorm.weight"].float()
    state["model.embed_tokens.weight"] = ranks[0]["transformer.vocab_embedding.weight"].float()
    state["model.norm.weight"] = ranks[0]["transformer.ln_f.weight"].float()
    head = torch.cat([t["lm_head.weight"] for t in ranks]).float()
    state["lm_head.weight"] = head[:cfg["vocab_size"]]
    return state


# Relative logits error of our model running the checkpoint's (de-fused) weights vs
# the fp32 source: fp32 weights are copied exactly (summation order only); fp16
# rounds each weight by <= 2^-11, bf16 by <= 2^-8 (measured on the tiny model: 5e-4
# and 3e-3); int8 per-channel by <= 1/254 of the row max, ~1% of the logits
# (quant/tests/test_quantize.py).
# The quantized algos (export/trt_llm_quant.py) compare against a float model holding the
# quantized source's dequantized weights (activation quantization is the engine's runtime, not
# the checkpoint's): codes x scales are exact, so what remains is the dtype's rounding of the
# unquantized tensors (embedding, norms, lm_head), the fp16 zero term of W4A16 (<= 2^-11 of
# (8 - z) * scale), and for FP8 the re-rounding of k/v codes to qkv's one scale (e4m3: <= 2^-4
# of each k/v weight, RMS 3%; measured 4.0e-2 of the tiny model's logits).
LOGITS_RTOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2, "int8": 3e-2,
               "W4A16_GPTQ": 2e-3, "W4A16_AWQ": 2e-3, "FP8": 6e-2, "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": 2e-3}


def validate_checkpoint(ckpt_dir: str, source, prompt: list[int]) -> dict:
    """Schema check, de-fuse, and logits parity of the checkpoint vs the fp32 source model."""
    from model.llama import Transformer

    cfg, ranks = read_checkpoint(ckpt_dir)
    state = to_hf_state(cfg, ranks)
    with torch.device("meta"):
        rebuilt = Transformer(source.config)
    rebuilt.load_state_dict(state, assign=True, strict=True)
    rebuilt.tie_weights()  # a tied lm_head shares the embedding again
    rebuilt.eval()
    algo = cfg["quantization"]["quant_algo"]
    key = cfg["dtype"] if not algo else ("int8" if algo == "W8A16" else algo)
    ids = torch.tensor([prompt])
    reference = source
    if algo and algo != "W8A16":
        from export.trt_llm_quant import dequantized_state

        with torch.device("meta"):
            reference = Transformer(source.config)
        reference.load_state_dict(dequantized_state(source), assign=True, strict=True)
        reference.tie_weights()
        reference.eval()
    with torch.no_grad():
        ref, got = reference(ids).float(), rebuilt(ids).float()
    err = float((got - ref).norm() / ref.norm())
    if not err <= LOGITS_RTOL[key]:  # written so that a NaN error fails
        raise ExportError(f"checkpoint logits differ from the source by {err:.2e} "
                          f"(> {LOGITS_RTOL[key]:.0e} for {key})")
    return {"logits_rel_err": err, "tolerance": LOGITS_RTOL[key], "tensors_per_rank": len(ranks[0])}
