"""Quantized TensorRT-LLM checkpoints (W4A16_GPTQ, W4A16_AWQ, FP8, W8A8 SmoothQuant per channel /
per token) written from OUR quant/ models: names, dtypes and shapes against a table read from
TensorRT-LLM's source, dequantization against our quantized weights, the int4 layout against an
index-map reference, config.json, bad input, and planted faults that the checks catch."""

import json

import pytest
import torch

from export.common import ExportError
from export.tests.cli import error_line, run_cli
from export.tests.models import trt_model
from export.tests.test_trt_llm import trtllm_table
from export import trt_llm_quant as tq
from export.trt_llm_ckpt import read_checkpoint, to_hf_state, validate_checkpoint, write_checkpoint
from quant import quantize, save_quantized

# Read from NVIDIA/TensorRT-LLM (paths and commits also in export/trt_llm_quant.py):
#   tensorrt_llm/quantization/mode.py at 03bcfcd16b1411add6c7ef1cbebf6933e8a1de88 and later
#     QuantAlgo(StrEnum) members W4A16_GPTQ, W4A16_AWQ, FP8, W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN
#   tensorrt_llm/models/llama/convert.py at 04a2cacbfd3b9ac76191bd8498ad871607b63a04:
#     load_weights_from_gptq.process_and_assign_weight -> {weight: preprocessed int4 .view(float16),
#       weights_scaling_factor: scales_fp16, zero: (-qzeros + 8 - 1) * scales};
#     get_tllm_linear_sq_weight(per_token, per_channel) -> {weight: (out_r, in) int8,
#       per_channel_scale: reshape(col_shape=[1, out]) fp32, smoother: [1, in_r] fp32 for dense/proj,
#       input_layernorm / post_layernorm .scale_to_int: [1.0] fp32}
#   tensorrt_llm/models/modeling_utils.py preprocess_weights, W4A16_AWQ branch: weight
#     preprocessor(param.T) (so the checkpoint holds (out/2, in) int8), weights_scaling_factor
#     param.T (checkpoint (out, in/group)), prequant_scaling_factor reshape(1, -1); FP8 branch:
#     weight viewed as float8_e4m3fn, lm_head stays in the model dtype
#   tensorrt_llm/quantization/layers.py WeightOnlyGroupwiseQuantLinear: zero (in/group, out);
#     FP8Linear: weights_scaling_factor, activation_scaling_factor shape (1,) float32
#   NVIDIA/TensorRT-Model-Optimizer modelopt/torch/export/quant_utils.py at
#     0338c843da9ab44e46b3da659ca469b8886b631c, pack_int4_in_uint8: AWQ weight (out/2, in) int8
#     with output 2j in the low nibble; process_layer_quant_config: W4A16_AWQ keys group_size,
#     has_zero_point, pre_quant_scale
QUANT_ALGO = {"w4a16_gptq": "W4A16_GPTQ", "w4a16_awq": "W4A16_AWQ", "fp8": "FP8",
              "w8a8_sq": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"}
# Per Linear: suffix -> (shape from (out_r, in_r, G_r = in_r / group, OUT = whole out), dtype).
F16, I8, F32, E4 = torch.float16, torch.int8, torch.float32, torch.float8_e4m3fn
TABLE = {
    "w4a16_gptq": {"weight": (lambda o, i, g, O: (i, o // 4), F16),
                   "weights_scaling_factor": (lambda o, i, g, O: (g, o), F16),
                   "zero": (lambda o, i, g, O: (g, o), F16)},
    "w4a16_awq": {"weight": (lambda o, i, g, O: (o // 2, i), I8),
                  "weights_scaling_factor": (lambda o, i, g, O: (o, g), F16),
                  "prequant_scaling_factor": (lambda o, i, g, O: (i,), F16),
                  "zero": (lambda o, i, g, O: (g, o), F16)},
    "w8a8_sq": {"weight": (lambda o, i, g, O: (o, i), I8),
                "per_channel_scale": (lambda o, i, g, O: (1, O), F32),
                "smoother": (lambda o, i, g, O: (1, i), F32)},  # dense / proj only
    "fp8": {"weight": (lambda o, i, g, O: (o, i), E4),
            "weights_scaling_factor": (lambda o, i, g, O: (1,), F32),
            "activation_scaling_factor": (lambda o, i, g, O: (1,), F32)},
}
METHOD = {"w4a16_gptq": ("gptq", dict(bits=4, group_size=64)), "w4a16_awq": ("awq", dict(group_size=64)),
          "w8a8_sq": ("smoothquant", {}), "fp8": ("fp8", dict(act="per_tensor"))}
CALIB = torch.randint(0, 301, (2, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def models():
    """Our quant/ methods run on the tiny export model (seeded calibration ids)."""
    return {q: quantize(trt_model(), m, CALIB, **o) for q, (m, o) in METHOD.items()}


def expected(model, quant: str, tp: int) -> dict:
    """The TensorRT-LLM table expanded for a model: name -> (shape, dtype)."""
    exp = {}
    for name, (shape, dtype, _, _) in trtllm_table(model, tp, torch.float16, int8=False).items():
        lin = name.rpartition(".weight")[0]
        if not lin.endswith(("qkv", "dense", "fc", "gate", "proj")) or "layernorm" in lin:
            exp[name] = (shape, dtype)
            continue
        o, i = shape
        g = i // 64
        whole = o  # dense / proj are split along in: their out is already whole
        for suffix, (fn, dt) in TABLE[quant].items():
            if suffix == "smoother" and not lin.endswith(("dense", "proj")):
                continue
            if suffix == "per_channel_scale":
                exp[f"{lin}.{suffix}"] = ((1, whole), dt)
            else:
                exp[f"{lin}.{suffix}"] = (fn(o, i, g, whole), dt)
    if quant == "w8a8_sq":
        for i in range(model.config.n_layers):
            for norm in ("input_layernorm", "post_layernorm"):
                exp[f"transformer.layers.{i}.{norm}.scale_to_int"] = ((1,), F32)
    return exp


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("quant", list(TABLE))
def test_names_dtypes_shapes_and_config_follow_trtllm_source(tmp_path, models, quant, tp):
    model = models[quant]
    write_checkpoint(model, tmp_path, torch.float16, tp=tp, quant=quant, sm=90, calib=CALIB)
    cfg = json.loads((tmp_path / "config.json").read_text())
    q = cfg["quantization"]
    assert q["quant_algo"] == QUANT_ALGO[quant] and q["kv_cache_quant_algo"] is None
    if quant.startswith("w4a16"):
        assert q["group_size"] == 64 and q["has_zero_point"] is True
        assert q["pre_quant_scale"] is (quant == "w4a16_awq")
    exp = expected(model, quant, tp)
    from safetensors import safe_open
    for r in range(tp):
        with safe_open(str(tmp_path / f"rank{r}.safetensors"), framework="pt") as f:
            got = {k: (tuple(f.get_tensor(k).shape), f.get_tensor(k).dtype) for k in f.keys()}
        assert set(got) == set(exp), (sorted(set(exp) - set(got))[:4], sorted(set(got) - set(exp))[:4])
        for k, v in exp.items():
            assert got[k] == (tuple(v[0]), v[1]), (k, got[k], v)
    rep = validate_checkpoint(tmp_path, model, [5, 6, 7, 8, 9])
    assert rep["logits_rel_err"] <= rep["tolerance"]


def _check_dequant(tmp_path, model, quant, tp):
    """to_hf_state(checkpoint) against our quantized model's own dequantized weights."""
    write_checkpoint(model, tmp_path, torch.float16, tp=tp, quant=quant, sm=90, calib=CALIB)
    got = to_hf_state(*read_checkpoint(tmp_path))
    ref = tq.dequantized_state(model)
    for i, layer in enumerate(model.model.layers):
        for n in tq.HF_LINEARS:
            k = f"model.layers.{i}.{n}.weight"
            mod = layer.get_submodule(n)
            a, b = got[k], ref[k].float()
            if quant.startswith("w4a16"):
                # codes and fp16 scales are exact; zero = fp16((8 - z) * s) rounds by <= 2^-11 of it
                g = mod.g_idx.long()
                bound = (2.0 ** -11) * ((8 - mod.zeros.float()) * mod.scales.float()).abs()[g].T
                assert (a - b).abs().le(bound + 1e-9).all(), k
            elif quant == "fp8" and n in ("self_attn.k_proj", "self_attn.v_proj"):
                # re-rounded to qkv's one scale: e4m3 half-ulp (2^-4 relative) + half the subnormal step
                s = max(float(layer.get_submodule(f"self_attn.{x}_proj").weight_scale) for x in "qkv")
                assert (a - b).abs().le(b.abs() * 2.0 ** -4 + s * 2.0 ** -10).all(), k
            else:  # SQ int8 codes x fp32 scales; FP8 q/o/mlp: exact
                assert torch.equal(a, b), k


@pytest.mark.parametrize("quant, tp", [(q, tp) for q in TABLE for tp in (1, 2)]
                         + [("w8a8_sq", 4), ("fp8", 4)])  # tp 4 > 2 kv heads: duplicated kv rows
def test_dequantized_checkpoint_equals_our_quantized_weights(tmp_path, models, quant, tp):
    _check_dequant(tmp_path, models[quant], quant, tp)


def test_int4_codes_are_ours_exactly(tmp_path, models):
    """GPTQ: unpacking the written int4 gives q - 8 of our codes, bit for bit (no scale involved)."""
    model = models["w4a16_gptq"]
    write_checkpoint(model, tmp_path, torch.float16, tp=1, quant="w4a16_gptq", sm=90)
    cfg, ranks = read_checkpoint(tmp_path)
    w = ranks[0]["transformer.layers.1.mlp.proj.weight"].view(torch.int8)
    signed = tq.unpack_int4(tq.unpreprocess_int4_weight(w, 90))  # (in, out)
    q = model.model.layers[1].mlp.down_proj.qweight
    assert torch.equal(signed.t().to(torch.int16), q.to(torch.int16) - 8)
    s = ranks[0]["transformer.layers.1.mlp.proj.weights_scaling_factor"]
    assert torch.equal(s, model.model.layers[1].mlp.down_proj.scales)


def test_awq_bytes_follow_modelopt_packing(tmp_path, models):
    """AWQ weight byte [j, i]: low nibble = code of output 2j at input i, high = output 2j+1
    (modelopt's pack_int4_in_uint8), codes signed q - 8 of our model, read without our unpacker."""
    model = models["w4a16_awq"]
    write_checkpoint(model, tmp_path, torch.float16, tp=1, quant="w4a16_awq", sm=90)
    _, ranks = read_checkpoint(tmp_path)
    b = ranks[0]["transformer.layers.0.attention.dense.weight"].view(torch.uint8).to(torch.int16)
    q = model.model.layers[0].self_attn.o_proj.qweight.to(torch.int16) - 8  # (out, in)
    assert torch.equal(b & 0xF, q[0::2] & 0xF) and torch.equal(b >> 4, q[1::2] & 0xF)


def test_fp8_activation_scale_is_static_amax_over_calibration(tmp_path, models):
    model = models["fp8"]
    write_checkpoint(model, tmp_path, torch.float16, tp=1, quant="fp8", calib=CALIB)
    _, ranks = read_checkpoint(tmp_path)
    with torch.no_grad():  # layer 0's qkv input: the first norm of the embeddings
        x = model.model.layers[0].input_layernorm(model.model.embed_tokens(CALIB))
    got = float(ranks[0]["transformer.layers.0.attention.qkv.activation_scaling_factor"])
    assert got == pytest.approx(float(x.abs().max()) / 448, rel=1e-6)


def reference_int4_sm90(signed: torch.Tensor) -> torch.Tensor:
    """An index-map statement of preprocess_weights_for_mixed_gemm(quint4x2, fp16, sm 90), written
    independently of the tensor ops in export/trt_llm_quant.py: element (k, n) of the signed (K, N)
    weight lands at nibble ((n*K + k') // 8) * 8 + j, where k' is k's row after the 32-row "16_4"
    permutation and j is the place [0,2,4,6,1,3,5,7] gives its position within 8; value v + 8 (mod 16);
    nibble 2b is the low half of byte b."""
    perm = [0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27,
            4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31]
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    K, N = signed.shape
    nib = [0] * (K * N)
    for k in range(K):
        kp = (k // 32) * 32 + perm.index(k % 32)  # new row k' holds old row perm[k' % 32]
        for n in range(N):
            base = n * K + kp
            pos = (base // 8) * 8 + order.index(base % 8)
            nib[pos] = (int(signed[k, n]) + 8) & 0xF
    out = bytes(nib[2 * b] | (nib[2 * b + 1] << 4) for b in range(K * N // 2))
    return torch.frombuffer(bytearray(out), dtype=torch.uint8).view(torch.int8).reshape(K, N // 2)


def check_int4_layout():
    torch.manual_seed(0)
    signed = torch.randint(-8, 8, (64, 16), dtype=torch.int8)
    # pack_int4: TensorRT-LLM's symmetric_quantize (int4) and pack_int8_tensor_to_packed_int4 put
    # column 2j in the low nibble: [1, -2] -> 0xE1
    assert tq.pack_int4(torch.tensor([[1, -2]], dtype=torch.int8)).view(torch.uint8).item() == 0xE1
    got = tq.preprocess_int4_weight(tq.pack_int4(signed), 90)
    assert torch.equal(got, reference_int4_sm90(signed))
    # SM100: column-major nibbles only (no permutation, no bias)
    assert torch.equal(tq.preprocess_int4_weight(tq.pack_int4(signed), 100).reshape(16, 32),
                       tq.pack_int4(signed.t().contiguous()))


def test_int4_layout_matches_index_map_reference():
    check_int4_layout()


@pytest.mark.parametrize("sm", [80, 86, 89, 90, 100, 120])
def test_int4_layout_inverts(sm):
    signed = torch.randint(-8, 8, (128, 24), dtype=torch.int8, generator=torch.Generator().manual_seed(sm))
    packed = tq.pack_int4(signed)
    assert torch.equal(tq.unpack_int4(packed), signed)
    assert torch.equal(tq.unpreprocess_int4_weight(tq.preprocess_int4_weight(packed, sm), sm), packed)


# Planted faults: each must make the check above fail (the checks can fail).
def test_planted_wrong_nibble_order_is_caught(monkeypatch, tmp_path, models):
    def swapped(signed):
        u = signed.to(torch.int16) & 0xF
        return (u[:, 1::2] | (u[:, 0::2] << 4)).to(torch.uint8).view(torch.int8)

    monkeypatch.setattr(tq, "pack_int4", swapped)
    with pytest.raises(AssertionError):
        check_int4_layout()
    monkeypatch.undo()
    monkeypatch.setattr(tq, "_NIBBLE_PERM", [0, 1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(AssertionError):
        check_int4_layout()


def test_planted_transposed_awq_scale_is_caught(monkeypatch, tmp_path, models):
    real = tq._emit

    def bad(out, name, p, quant, *a):
        real(out, name, p, quant, *a)
        s = out[name + ".weights_scaling_factor"]  # (out, G): write its transpose's bytes instead
        out[name + ".weights_scaling_factor"] = s.t().contiguous().reshape(s.shape)

    monkeypatch.setattr(tq, "_emit", bad)
    with pytest.raises(AssertionError):
        _check_dequant(tmp_path, models["w4a16_awq"], "w4a16_awq", 1)


def test_bad_input_names_the_flag(tmp_path, models):
    with pytest.raises(ExportError, match=r"--quant w4a16_awq .*quantized with 'gptq'"):
        write_checkpoint(models["w4a16_gptq"], tmp_path / "a", torch.float16, quant="w4a16_awq")
    with pytest.raises(ExportError, match="--quant w4a16_gptq.*not quantized"):
        write_checkpoint(trt_model(), tmp_path / "b", torch.float16, quant="w4a16_gptq")
    g32 = quantize(trt_model(), "rtn", None, bits=4, group_size=32)
    g32.quantization["method"] = "gptq"  # an RTN model posing as GPTQ: same layers, group size 32
    with pytest.raises(ExportError, match=r"--quant w4a16_gptq: group_size=32 .*\(64, 128\)"):
        write_checkpoint(g32, tmp_path / "c", torch.float16, quant="w4a16_gptq")
    with pytest.raises(ExportError, match="unknown --quant 'w4a16'"):
        write_checkpoint(trt_model(), tmp_path / "d", torch.float16, quant="w4a16")
    with pytest.raises(ExportError, match="--quant w4a16_gptq needs --dtype float16"):
        write_checkpoint(models["w4a16_gptq"], tmp_path / "e", torch.bfloat16, quant="w4a16_gptq")
    with pytest.raises(ExportError, match="--quant int8 exports float weights"):
        write_checkpoint(models["w8a8_sq"], tmp_path / "f", torch.float16, quant="int8")
    with pytest.raises(ExportError, match="--quant fp8 needs calibration ids"):
        write_checkpoint(models["fp8"], tmp_path / "g", torch.float16, quant="fp8")


def test_binary_writes_gptq_and_refuses_a_mismatched_method(tmp_path, models):
    save_quantized(models["w4a16_gptq"], str(tmp_path / "q"))
    proc = run_cli("trt_llm", "--checkpoint", str(tmp_path / "q"), "--output", str(tmp_path / "out"),
                   "--quant", "w4a16_gptq", "--tp_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "quant_algo W4A16_GPTQ" in proc.stdout and "2 rank(s)" in proc.stdout
    line = error_line(run_cli("trt_llm", "--checkpoint", str(tmp_path / "q"), "--output", str(tmp_path / "o2"),
                              "--quant", "w8a8_sq"))
    assert "--quant w8a8_sq" in line and "'gptq'" in line
    proc = run_cli("trt_llm", "--output", str(tmp_path / "o3"), "--quant", "w4a16")  # absl's enum check
    assert proc.returncode != 0 and "flag --quant=w4a16: value should be one of" in proc.stderr
    assert "w4a16_gptq|w4a16_awq|fp8|w8a8_sq" in proc.stderr and "Traceback" not in proc.stderr
