"""A quant/-quantized Llama -> the quantized tensors of a TensorRT-LLM checkpoint (W4A16_GPTQ,
W4A16_AWQ, FP8, W8A8 SmoothQuant per channel / per token), and their inverse.

The codes and scales are OUR quantizers' (quant.quantize: gptq, awq, fp8, smoothquant); this
module only re-lays them out. Names, dtypes, shapes and packing were read from TensorRT-LLM's
own source (NVIDIA/TensorRT-LLM), not guessed:
  tensorrt_llm/quantization/mode.py             QuantAlgo names (StrEnum: the name is the value)
      read at commit 03bcfcd16b1411add6c7ef1cbebf6933e8a1de88 and the QuantAlgo list
      W4A16_AWQ, W4A16_GPTQ, W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN, FP8 of later versions
  tensorrt_llm/models/llama/convert.py          (04a2cacbfd3b9ac76191bd8498ad871607b63a04)
      load_weights_from_gptq / process_and_assign_weight (GPTQ),
      get_tllm_linear_sq_weight + load_weights_from_hf_model's use_smooth_quant branch (SQ)
  tensorrt_llm/models/modeling_utils.py         preprocess_weights: the W4A16_AWQ branch
      (weight = preprocess(param.T).view(dtype), weights_scaling_factor = param.T,
      prequant_scaling_factor reshaped (1, -1)) and the FP8 branch (int8 viewed as e4m3)
  tensorrt_llm/quantization/functional.py       preprocess_weights_for_mixed_gemm (int4 path)
  tensorrt_llm/quantization/layers.py           WeightOnlyGroupwiseQuantLinear: weight
      (in, out/4) fp16, weights_scaling_factor / zero (in/group, out), prequant (1, in)
  NVIDIA/TensorRT-Model-Optimizer modelopt/torch/export/quant_utils.py
      (0338c843da9ab44e46b3da659ca469b8886b631c) pack_int4_in_uint8: the AWQ checkpoint
      weight, (out/2, in) with output 2j in the low nibble; process_layer_quant_config:
      W4A16_AWQ's group_size / has_zero_point / pre_quant_scale keys (modelopt's AWQ is
      symmetric, has_zero_point false; ours is asymmetric, so true with a `zero` tensor)

Per quantized Linear (qkv, dense, fc, gate, proj; "_r" = this rank's slice, G = groups):
  W4A16_GPTQ (written already laid out for the build GPU, as convert.py does):
    weight                  float16 (in_r, out_r/4): int4 codes q-8 (signed), packed two per
                            byte along out (low nibble = even column, pack_int8_tensor_to_packed_int4),
                            then preprocess_weights_for_mixed_gemm(quint4x2, fp16, sm),
                            the int8 bytes viewed as float16
    weights_scaling_factor  float16 (G_r, out_r)   our fp16 scales
    zero                    float16 (G_r, out_r)   (8 - z) * scale: W = (q-8)*s + zero = s*(q-z)
  W4A16_AWQ (written as modelopt's export writes it; preprocess_weights lays it out at build):
    weight                  int8 (out_r/2, in_r): signed codes q-8, two outputs per byte
    weights_scaling_factor  dtype (out_r, G_r)   (preprocess_weights transposes it)
    prequant_scaling_factor dtype (in_r,)        ones: our AWQ already folded its scales into
                                                 the producer (norm / up_proj / v_proj)
    zero                    dtype (G_r, out_r)   (8 - z) * s; our AWQ is asymmetric, so
                                                 has_zero_point is true. preprocess_weights does
                                                 not touch `zero`, so it is written in the
                                                 layer's own (in/group, out) shape (our reading)
  W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN (get_tllm_linear_sq_weight, per_token + per_channel):
    weight                  int8 (out_r, in_r)   codes q-128 (our symmetric 8-bit grid)
    per_channel_scale       float32 (1, out_r) for qkv/fc/gate; (1, out) for dense/proj
                            (row-parallel: every rank holds the whole output scale)
    smoother                float32 (1, in_r), dense and proj only: ones (our SmoothQuant
                            folded every smoothing scale into the producer)
    input_layernorm.scale_to_int, post_layernorm.scale_to_int  float32 (1,) = 1.0
  FP8 (per-tensor e4m3 weights, static per-tensor e4m3 activations):
    weight                  float8_e4m3fn (out_r, in_r)
    weights_scaling_factor  float32 (1,)  qkv: the max of q/k/v's scales, k and v re-rounded
                                          to it (one scale per fused GEMM, as modelopt does)
    activation_scaling_factor float32 (1,)  static amax / 448 of the Linear's input over the
                                          calibration ids (TensorRT-LLM's FP8 has no dynamic
                                          activation scale; ours may be dynamic)
lm_head and the embedding stay in the model dtype (never quantized). No engine is built here.
"""

from __future__ import annotations

from typing import Optional

import torch

from export.common import ExportError

# --quant value -> (TensorRT-LLM QuantAlgo, our quant.quantize method)
ALGOS = {
    "w4a16_gptq": ("W4A16_GPTQ", "gptq"),
    "w4a16_awq": ("W4A16_AWQ", "awq"),
    "fp8": ("FP8", "fp8"),
    "w8a8_sq": ("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "smoothquant"),
}
INT4_GROUP_SIZES = (64, 128)  # the CUTLASS fine-grained (groupwise) int4 GEMM's group sizes
FP8_MAX = 448.0
HF_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# preprocess_weights_for_mixed_gemm, int4 weights with 16-bit activations: rows permuted in
# blocks of 32 (permutation "16_4").
_ROW_PERM_16_4 = [0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27,
                  4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31]
_NIBBLE_PERM = [0, 2, 4, 6, 1, 3, 5, 7]  # add_bias_and_interleave, int4: within 8 nibbles


# ------------------------------------------------------------------------------ int4 packing

def pack_int4(signed: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], (K, N) -> int8 (K, N/2): column 2j in the low nibble, 2j+1 high."""
    u = (signed.to(torch.int16) & 0xF)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: int8 (K, N/2) -> signed int8 (K, 2N/2)."""
    u = packed.view(torch.uint8).to(torch.int16)
    lo, hi = u & 0xF, u >> 4
    out = torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)
    return torch.where(out > 7, out - 16, out).to(torch.int8)


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """uint8 (..., M) -> (..., 2M) nibbles, low first."""
    u = b.to(torch.int16)
    return torch.stack([u & 0xF, u >> 4], dim=-1).reshape(*b.shape[:-1], -1)


def _bytes(n: torch.Tensor) -> torch.Tensor:
    """(..., 2M) nibbles -> uint8 (..., M), even index in the low nibble."""
    return (n[..., 0::2] | (n[..., 1::2] << 4)).to(torch.uint8)


def preprocess_int4_weight(packed: torch.Tensor, sm: int) -> torch.Tensor:
    """preprocess_weights_for_mixed_gemm(packed, quint4x2, fp16/bf16, sm) for a 2-D int4 weight.

    packed: int8 (K=in, N/2) from pack_int4. Steps (functional.py): SM75-90 and SM120+ (which
    reuses SM80) permute rows in blocks of 32 ("16_4"); all transpose to column-major
    nibbles (N, K) packed along K; below SM90 interleave 4 columns per 64-row tile; then
    (all but SM100/103) reorder each 8 nibbles [0,2,4,6,1,3,5,7] and add 8 (signed ->
    biased). Returns int8 (K, N/2).
    """
    sm = 80 if sm >= 120 else sm
    interleave = sm not in (100, 103)
    K, half = packed.shape
    N = half * 2
    t = packed.view(torch.uint8)
    if interleave:
        rows = torch.arange(K).view(-1, 32)[:, _ROW_PERM_16_4].reshape(-1)
        t = t[rows]
    cols = _nibbles(t).t().contiguous()  # (N, K) nibbles: column-major
    t = _bytes(cols).reshape(K, half)  # packed along K
    if interleave:
        if sm < 90:
            t = t.reshape(N // 4, 4, K // 64, 32).permute(0, 2, 1, 3).reshape(K, half)
        n = _nibbles(t).reshape(-1, 8)[:, _NIBBLE_PERM]
        n = (n + 8) & 0xF
        t = _bytes(n.reshape(K, N)).reshape(K, half)
    return t.view(torch.int8).contiguous()


def unpreprocess_int4_weight(t: torch.Tensor, sm: int) -> torch.Tensor:
    """Inverse of preprocess_int4_weight: the pack_int4 int8 (K, N/2) tensor."""
    sm = 80 if sm >= 120 else sm
    interleave = sm not in (100, 103)
    K, half = t.shape
    N = half * 2
    t = t.view(torch.uint8)
    if interleave:
        inv = torch.empty(8, dtype=torch.long)
        inv[torch.tensor(_NIBBLE_PERM)] = torch.arange(8)
        n = (_nibbles(t).reshape(-1, 8) - 8) & 0xF
        t = _bytes(n[:, inv].reshape(K, N)).reshape(K, half)
        if sm < 90:
            t = t.reshape(N // 4, K // 64, 4, 32).permute(0, 2, 1, 3).reshape(K, half)
    cols = _nibbles(t.reshape(N, K // 2))  # (N, K)
    t = _bytes(cols.t().contiguous())  # (K, N/2) packed along N
    if interleave:
        inv = torch.empty(32, dtype=torch.long)
        inv[torch.tensor(_ROW_PERM_16_4)] = torch.arange(32)
        t = t[torch.arange(K).view(-1, 32)[:, inv].reshape(-1)]
    return t.view(torch.int8).contiguous()


# ------------------------------------------------------------------------------ checks

def check_model(model, quant: str, dtype: torch.dtype, tp: int, sm: int) -> dict:
    """The model's quant/ options; ExportError naming --quant when they cannot be exported as `quant`."""
    from quant.qlinear import FP8Linear, QuantLinear

    algo, method = ALGOS[quant]
    qc = getattr(model, "quantization", None) or {}
    have = qc.get("method")
    if have != method:
        raise ExportError(f"--quant {quant} ({algo}) exports a model quantized by quant/ method {method!r}; "
                          f"--checkpoint is {'quantized with ' + repr(have) if have else 'not quantized'} "
                          f"(make one: python -m quant.cli --method {method} ...)")
    o = qc.get("options", {})
    if qc.get("rotated"):
        raise ExportError(f"--quant {quant}: a rotated (QuaRot) model has an online Hadamard TensorRT-LLM lacks")
    config = model.config
    for i, layer in enumerate(model.model.layers):
        for n in HF_LINEARS:
            mod = layer.get_submodule(n)
            want = FP8Linear if quant == "fp8" else QuantLinear
            if not isinstance(mod, want):
                raise ExportError(f"--quant {quant}: model.layers.{i}.{n} is {type(mod).__name__}, "
                                  f"not {want.__name__} (a skipped layer cannot be exported)")
    if quant in ("w4a16_gptq", "w4a16_awq"):
        if o.get("bits") != 4 or o.get("act_bits") is not None:
            raise ExportError(f"--quant {quant} needs 4-bit weight-only codes; the model has "
                              f"bits={o.get('bits')} act_bits={o.get('act_bits')}")
        if o.get("act_order"):
            raise ExportError(f"--quant {quant}: act_order (a permuted g_idx) has no TensorRT-LLM layout; "
                              "quantize with act_order=False")
        if o.get("group_size") not in INT4_GROUP_SIZES:
            raise ExportError(f"--quant {quant}: group_size={o.get('group_size')} is not supported by "
                              f"TensorRT-LLM's groupwise int4 GEMM; choose one of {INT4_GROUP_SIZES}")
        if dtype != torch.float16:
            raise ExportError(f"--quant {quant} needs --dtype float16 (TensorRT-LLM's int4 checkpoints "
                              "hold fp16 scales)")
        gs = o["group_size"]
        k_mult = 64 if sm < 90 or sm >= 120 else 32
        d = config.head_dim
        qkv_out = (config.n_heads + 2 * max(config.n_kv_heads, tp)) * d // tp
        gemms = {"attention.qkv": (config.dim, qkv_out), "attention.dense": (config.n_heads * d // tp, config.dim),
                 "mlp.fc/gate": (config.dim, config.intermediate_size // tp),
                 "mlp.proj": (config.intermediate_size // tp, config.dim)}
        for name, (k, n) in gemms.items():
            if k % k_mult or n % 8 or k % gs:
                raise ExportError(f"--quant {quant}: {name} is {k} in x {n} out per rank; TensorRT-LLM's int4 "
                                  f"layout (sm {sm}) needs in % {k_mult} == 0, in % group_size ({gs}) == 0 "
                                  f"and out % 8 == 0 at --tp_size {tp}")
    elif quant == "fp8":
        if o.get("per_row"):
            raise ExportError("--quant fp8 (TensorRT-LLM FP8) takes per-tensor weight scales; the model "
                              "was quantized with per_row=True")
        if dtype == torch.float32:
            raise ExportError("--quant fp8 needs --dtype float16 or bfloat16")
    elif quant == "w8a8_sq" and dtype == torch.float32:
        raise ExportError("--quant w8a8_sq needs --dtype float16 or bfloat16")
    return o


# ------------------------------------------------------------------------------ per-rank tensors

def _dup_rows(t: torch.Tensor, n_kv: int, tp: int) -> torch.Tensor:
    reps = tp // n_kv
    head = t.shape[0] // n_kv
    return t.reshape(n_kv, 1, head, -1).expand(n_kv, reps, head, t.shape[1]).reshape(-1, t.shape[1])


def _pieces(mod, quant: str) -> dict:
    """One Linear's quantized tensors, out-major: codes (out, in); scales/zeros (out, G)."""
    if quant == "fp8":
        return {"w": mod.weight, "s": mod.weight_scale.reshape(())}
    return {"w": mod.qweight, "s": mod.scales.t(), "z": mod.zeros.t()}


def _slice(p: dict, tp: int, r: int, dim: int) -> dict:
    """Rank r's part: dim 0 = output rows (column parallel), 1 = inputs (row parallel; groups too)."""
    # A single group (SmoothQuant's per-channel scale) is whole on every row-parallel rank.
    return {k: (v if v.dim() == 0 or (k != "w" and v.shape[dim] == 1) else torch.chunk(v, tp, dim=dim)[r])
            for k, v in p.items()}


def _fp8_fuse(parts: list[dict]) -> dict:
    """One per-tensor scale for the fused qkv: the max; the others' codes re-rounded to it."""
    s = max(float(p["s"]) for p in parts)
    ws = [(p["w"].float() * (float(p["s"]) / s)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
          for p in parts]
    return {"w": torch.cat(ws), "s": torch.tensor(s)}


def _emit(out: dict, name: str, p: dict, quant: str, dtype, sm: int, full_out: Optional[int],
          act_scale: Optional[float]) -> None:
    """Write one rank's Linear `name` (out-major pieces p) in `quant`'s TensorRT-LLM layout."""
    if quant == "w4a16_gptq":
        signed = (p["w"].to(torch.int16) - 8).to(torch.int8).t().contiguous()  # (in, out)
        out[name + ".weight"] = preprocess_int4_weight(pack_int4(signed), sm).view(torch.float16)
        s = p["s"].float()
        out[name + ".weights_scaling_factor"] = s.t().half().contiguous()
        out[name + ".zero"] = ((8 - p["z"].float()) * s).t().half().contiguous()
    elif quant == "w4a16_awq":
        signed = (p["w"].to(torch.int16) - 8).to(torch.int8).t().contiguous()  # (in, out)
        out[name + ".weight"] = pack_int4(signed).t().contiguous()  # (out/2, in)
        s = p["s"].float()
        out[name + ".weights_scaling_factor"] = s.to(dtype).contiguous()  # (out, G)
        out[name + ".prequant_scaling_factor"] = torch.ones(p["w"].shape[1], dtype=dtype)
        out[name + ".zero"] = ((8 - p["z"].float()) * s).t().to(dtype).contiguous()  # (G, out)
    elif quant == "w8a8_sq":
        out[name + ".weight"] = (p["w"].to(torch.int16) - 128).to(torch.int8).contiguous()  # (out, in)
        scale = p["s"].float()[:, 0]  # (out,), one group
        out[name + ".per_channel_scale"] = scale.reshape(1, -1).contiguous()
        if full_out is not None:  # dense / proj: a smoother over this rank's inputs
            out[name + ".smoother"] = torch.ones(1, p["w"].shape[1], dtype=torch.float32)
    else:  # fp8
        out[name + ".weight"] = p["w"].contiguous()
        out[name + ".weights_scaling_factor"] = p["s"].float().reshape(1)
        out[name + ".activation_scaling_factor"] = torch.tensor([act_scale], dtype=torch.float32)


def quant_rank(model, quant: str, dtype, tp: int, rank: int, sm: int,
               act_scales: Optional[dict] = None) -> dict:
    """TensorRT-LLM quantized-Linear tensors (and SQ norm scales) of one rank, every layer."""
    config = model.config
    n_kv = config.n_kv_heads
    out: dict[str, torch.Tensor] = {}
    act_scales = act_scales or {}
    for i, layer in enumerate(model.model.layers):
        hf, tl = f"model.layers.{i}.", f"transformer.layers.{i}."

        def get(n):
            return _pieces(layer.get_submodule(n), quant)

        def act(n):
            return act_scales.get(hf + n)

        qkv = []
        for n in ("q", "k", "v"):
            p = get(f"self_attn.{n}_proj")
            if n != "q" and n_kv < tp:
                p = {k: (v if v.dim() == 0 else _dup_rows(v, n_kv, tp)) for k, v in p.items()}
            qkv.append(_slice(p, tp, rank, 0))
        fused = (_fp8_fuse(qkv) if quant == "fp8" else
                 {k: torch.cat([p[k] for p in qkv]) for k in qkv[0]})
        _emit(out, tl + "attention.qkv", fused, quant, dtype, sm, None, act("self_attn.q_proj"))
        _emit(out, tl + "attention.dense", _slice(get("self_attn.o_proj"), tp, rank, 1), quant, dtype, sm,
              config.dim, act("self_attn.o_proj"))
        _emit(out, tl + "mlp.fc", _slice(get("mlp.gate_proj"), tp, rank, 0), quant, dtype, sm, None,
              act("mlp.gate_proj"))
        _emit(out, tl + "mlp.gate", _slice(get("mlp.up_proj"), tp, rank, 0), quant, dtype, sm, None,
              act("mlp.up_proj"))
        _emit(out, tl + "mlp.proj", _slice(get("mlp.down_proj"), tp, rank, 1), quant, dtype, sm, config.dim,
              act("mlp.down_proj"))
        if quant == "w8a8_sq":
            for norm in ("input_layernorm", "post_layernorm"):
                out[tl + norm + ".scale_to_int"] = torch.tensor([1.0], dtype=torch.float32)
    return out


def dequantized_state(model) -> dict:
    """model.state_dict() with every quantized Linear's buffers replaced by its fp32 `.weight`."""
    from quant.qlinear import FP8Linear, QuantLinear

    state = {}
    quantized = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, FP8Linear)):
            quantized[name] = mod
            state[name + ".weight"] = mod.dequantized_weight(torch.float32)
    for k, v in model.state_dict().items():
        if k.rpartition(".")[0] not in quantized:
            state[k] = v.detach()
    return state


@torch.no_grad()
def fp8_activation_scales(model, calib: torch.Tensor) -> dict:
    """Static e4m3 activation scales: amax / 448 of each Linear's input over calib (n, T) ids."""
    amax: dict[str, float] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for n in HF_LINEARS:
            name = f"model.layers.{i}.{n}"

            def hook(_m, args, _out, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].abs().max()))
            hooks.append(layer.get_submodule(n).register_forward_hook(hook))
    try:
        for row in calib:
            model(row[None])
    finally:
        for h in hooks:
            h.remove()
    return {k: max(v, 1e-12) / FP8_MAX for k, v in amax.items()}


# ------------------------------------------------------------------------------ reading back

def expected_linear(name: str, algo: str, n_out: int, n_in: int, dtype, q: dict) -> dict:
    """Name -> (shape, dtype) of one rank's quantized Linear (module doc), from config.json alone."""
    gs = q.get("group_size")
    row_parallel = name.endswith(("attention.dense", "mlp.proj"))
    if algo == "W4A16_GPTQ":
        return {name + ".weight": ((n_in, n_out // 4), torch.float16),
                name + ".weights_scaling_factor": ((n_in // gs, n_out), torch.float16),
                name + ".zero": ((n_in // gs, n_out), torch.float16)}
    if algo == "W4A16_AWQ":
        return {name + ".weight": ((n_out // 2, n_in), torch.int8),
                name + ".weights_scaling_factor": ((n_out, n_in // gs), dtype),
                name + ".prequant_scaling_factor": ((n_in,), dtype),
                name + ".zero": ((n_in // gs, n_out), dtype)}
    if algo == ALGOS["w8a8_sq"][0]:
        exp = {name + ".weight": ((n_out, n_in), torch.int8),
               name + ".per_channel_scale": ((1, n_out), torch.float32)}
        if row_parallel:
            exp[name + ".smoother"] = ((1, n_in), torch.float32)
        return exp
    return {name + ".weight": ((n_out, n_in), torch.float8_e4m3fn),
            name + ".weights_scaling_factor": ((1,), torch.float32),
            name + ".activation_scaling_factor": ((1,), torch.float32)}


def dequantize_linear(t: dict, name: str, cfg: dict) -> torch.Tensor:
    """One rank's (out, in) fp32 weight from its TensorRT-LLM quantized tensors."""
    algo = cfg["quantization"]["quant_algo"]
    if algo == "W4A16_GPTQ":
        sm = cfg["lab_export"]["int4_layout_sm"]
        packed = unpreprocess_int4_weight(t[name + ".weight"].view(torch.int8), sm)
        signed = unpack_int4(packed).float()  # (in, out)
        g = torch.arange(signed.shape[0]) // cfg["quantization"]["group_size"]
        w = signed * t[name + ".weights_scaling_factor"].float()[g] + t[name + ".zero"].float()[g]
        return w.t().contiguous()
    if algo == "W4A16_AWQ":
        signed = unpack_int4(t[name + ".weight"].t().contiguous()).float()  # (in, out)
        g = torch.arange(signed.shape[0]) // cfg["quantization"]["group_size"]
        s = t[name + ".weights_scaling_factor"].float().t()  # (G, out)
        w = signed * s[g] + t[name + ".zero"].float()[g]
        return (w * t[name + ".prequant_scaling_factor"].float()[:, None]).t().contiguous()
    if algo == ALGOS["w8a8_sq"][0]:
        w = t[name + ".weight"].float() * t[name + ".per_channel_scale"].float().reshape(-1, 1)
        sm = t.get(name + ".smoother")
        return w if sm is None else w / sm.float().reshape(1, -1)
    return t[name + ".weight"].float() * t[name + ".weights_scaling_factor"].float()
