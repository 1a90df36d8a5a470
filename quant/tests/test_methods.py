"""GPTQ, AWQ, SmoothQuant, RTN, FP8 and rotations: math against references, formats, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import model as lab_model
from model.config import ModelConfig
from model.llama import Transformer
from parity.tolerance import Tol, assert_close
from quant import FP8Linear, QuantizationError, QuantLinear, load_quantized, quantize, save_quantized
from quant.formats import _pack, _unpack, pack_awq, pack_gptq, unpack_awq, unpack_gptq
from quant.gptq import gptq_quantize
from quant.qlinear import quantize_fp8
from quant.rotation import hadamard, rotate
from quant.rtn import dequantize, quantize_activation, rtn_quantize


def tiny_model(seed=0, tie=False, **over):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_name("tiny").replace(tie_word_embeddings=tie, **over))
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.uniform_(p, 0.5, 1.5)  # non-trivial norms: folding them must be right
        else:
            nn.init.normal_(p, std=0.05)
    return model.eval()


def calib(n=4, T=32, seed=1):
    return torch.randint(0, 512, (n, T), generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


# ------------------------------------------------------------------------------------------ quantizer math

@pytest.mark.parametrize("bits,gs,sym", [(4, 32, False), (4, -1, True), (8, 64, False), (2, 16, True)])
def test_rtn_matches_elementwise_reference(bits, gs, sym):
    torch.manual_seed(0)
    w = torch.randn(5, 64) * torch.rand(5, 1) * 3
    q, scales, zeros, g_idx = rtn_quantize(w, bits, gs, sym)
    gsz = 64 if gs == -1 else gs
    maxq = 2 ** bits - 1
    for o in range(5):  # loop reference, straight from the docstring's formulas
        for g in range(64 // gsz):
            x = w[o, g * gsz:(g + 1) * gsz]
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            if sym:
                hi = max(-lo, hi)
                lo = -hi
            s = float(torch.tensor((hi - lo) / maxq).half())
            z = (maxq + 1) / 2 if sym else min(max(round(-lo / s), 0), maxq)
            assert scales[g, o].item() == pytest.approx(s, rel=1e-6) and zeros[g, o].item() == z
            ref = torch.clamp(torch.round(x / s) + z, 0, maxq)
            assert torch.equal(q[o, g * gsz:(g + 1) * gsz].float(), ref)
    err = (dequantize(q, scales, zeros, g_idx) - w).abs()
    # Half a step, plus what the fp16 rounding of the scale can clip at the range's end (maxq * 2^-11
    # steps, bounded by 2^-10 here); the symmetric grid has one code fewer on the positive side, so
    # its largest positive weight may land a whole step off.
    step = scales[g_idx.long()].T.float()
    bound = step * ((1.0 if sym else 0.5) + maxq * 2 ** -10) + 1e-6
    assert not float((err - bound).max()) > 0


def test_activation_quant_is_per_token():
    x = torch.tensor([[1.0, -0.5, 0.25], [100.0, 3.0, -7.0]])
    y = quantize_activation(x, 8)
    assert torch.equal(y[0], torch.round(x[0] / (1 / 127)) * (1 / 127))  # row 0 keeps its own scale
    assert float((y - x).abs().max()) <= 100 / 127 / 2 + 1e-6


def test_fp8_dequant_within_e4m3_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16, bias=False)
    for per_row in (False, True):
        m = FP8Linear.from_linear(lin, per_row)
        ref = lin.weight.detach()
        # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normals; below the smallest
        # normal (2^-6 * scale) the absolute step is 2^-9 * scale.
        scale = m.weight_scale if per_row else m.weight_scale.expand(16, 1)
        assert_close(m.dequantized_weight(), ref, Tol(atol=float(scale.max()) * 2 ** -10, rtol=2 ** -4),
                     "fp8 weights")
        x = torch.randn(3, 64)
        assert_close(m(x), x @ m.dequantized_weight().T, Tol(1e-5, 1e-5), "fp8 weight-only forward")


# ---------------------------------------------------------------------------------------------------- GPTQ

def outlier_layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs (real activations are: 24 latent directions mixed into 128 channels) with
    # planted outlier columns. GPTQ's gain comes from the off-diagonal Hessian: on i.i.d. columns it
    # is no better than RTN, which the H = I case below pins down.
    x = torch.randn(2048, 24, generator=g) @ torch.randn(24, 128, generator=g) + 0.1 * torch.randn(2048, 128, generator=g)
    x[:, [3, 40, 77, 100]] *= 20
    w = torch.randn(64, 128, generator=g) * 0.1
    return x, w


@pytest.mark.parametrize("act_order,gs", [(False, 32), (True, 32), (False, -1)])
def test_gptq_beats_rtn_on_outlier_columns(act_order, gs):
    x, w = outlier_layer()
    H = 2 / x.shape[0] * x.T @ x
    ref = x @ w.T

    def err(codes):
        return float((x @ dequantize(*codes).T - ref).norm() / ref.norm())

    e_rtn = err(rtn_quantize(w, 4, gs, False))
    e_gptq = err(gptq_quantize(w, H, 4, gs, False, act_order=act_order))
    # measured: GPTQ 0.3-0.5x RTN's error here; with H = I (no correlations to exploit) it equals RTN.
    assert not e_gptq <= 0.0 and not e_gptq >= 0.8 * e_rtn, (e_gptq, e_rtn)
    same = gptq_quantize(w, torch.eye(128), 4, gs, False, percdamp=0.0)
    assert torch.equal(same[0], rtn_quantize(w, 4, gs, False)[0])  # the error feedback is the difference


def test_gptq_act_order_g_idx_is_a_permuted_grouping():
    x, w = outlier_layer(1)
    q, scales, zeros, g_idx = gptq_quantize(w, 2 / 2048 * x.T @ x, 4, 32, True, act_order=True)
    assert sorted(torch.bincount(g_idx.long()).tolist()) == [32] * 4
    assert not torch.equal(g_idx, torch.arange(128, dtype=torch.int32) // 32)  # outliers went first
    assert int(g_idx[3]) == 0 and int(g_idx[40]) == 0


# ------------------------------------------------------------------------------------------------ packing

@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gptq_pack_roundtrip(bits):
    torch.manual_seed(bits)
    maxq = 2 ** bits - 1
    q = torch.randint(0, maxq + 1, (64, 128), dtype=torch.uint8)
    zeros = torch.randint(0, maxq + 1, (4, 64), dtype=torch.uint8)
    scales = torch.rand(4, 64).half()
    g_idx = torch.randperm(128).to(torch.int32) // 32
    t = pack_gptq(q, scales, zeros, g_idx, bits)
    assert t["qweight"].shape == (128 * bits // 32, 64) and t["qweight"].dtype == torch.int32
    back = unpack_gptq(t, bits, 32, 128, 64, "x")
    for a, b in zip(back, (q, scales, zeros, g_idx)):
        assert torch.equal(a, b)


def test_awq_pack_roundtrip_and_interleave():
    q = torch.zeros(8, 16, dtype=torch.uint8)
    q[:, 0] = torch.arange(8)  # input 0: output o has code o
    t = pack_awq(q, torch.ones(1, 8).half(), torch.zeros(1, 8, dtype=torch.uint8))
    # AutoAWQ order (0, 2, 4, 6, 1, 3, 5, 7): nibble k holds output ORDER[k]
    assert int(t["qweight"][0, 0]) == 0x75316420
    back = unpack_awq(t, 4, 16, 16, 8, "x")
    assert torch.equal(back[0], q)


def test_pack_words_are_unsigned_32_bit():
    vals = torch.full((8, 1), 15)
    word = _pack(vals, 4, dim=0)
    assert word.dtype == torch.int32 and int(word) == -1  # 0xFFFFFFFF
    assert torch.equal(_unpack(word, 4, dim=0), vals)


# ------------------------------------------------------------------------------------- checkpoints / loader

def test_hand_built_gptq_fixture_loads_expected_weights(tmp_path):
    model = quantize(tiny_model(tie=True), "rtn", bits=4, group_size=32, sym=True)
    save_quantized(model, tmp_path)
    fname = tmp_path / "model.safetensors"
    t = load_file(fname)
    name = "model.layers.0.self_attn.k_proj"  # (out 32, in 64): qweight (8, 32), qzeros (2, 4), scales (2, 32)
    qweight = torch.zeros(8, 32, dtype=torch.int64)
    qweight[:, :] = 0x76543210  # inputs 8r..8r+7 of every output: codes 0, 1, ..., 7
    qweight[1, 5] = 0xFEDCBA98  # inputs 8..15 of output 5: codes 8..15
    t[f"{name}.qweight"] = torch.where(qweight >= 2 ** 31, qweight - 2 ** 32, qweight).to(torch.int32)
    t[f"{name}.qzeros"] = torch.full((2, 4), 0x77777777, dtype=torch.int32)  # v1: zero - 1 = 7, so zero 8
    t[f"{name}.qzeros"][1] = 0x33333333  # group 1: zero 4
    t[f"{name}.scales"] = torch.tensor([0.5, 0.25]).half()[:, None].expand(2, 32).contiguous()
    t[f"{name}.g_idx"] = (torch.arange(64) // 32).to(torch.int32)
    save_file(t, fname, metadata={"format": "pt"})
    loaded = lab_model.load(str(tmp_path))  # the one loader: detects quantization_config
    w = loaded.get_submodule(name).dequantized_weight()
    expected = torch.empty(32, 64)
    codes = torch.arange(64) % 8
    expected[:, :32] = 0.5 * (codes[:32] - 8)
    expected[:, 32:] = 0.25 * (codes[32:] - 4)
    expected[5, 8:16] = 0.5 * (torch.arange(8, 16) - 8)
    assert torch.equal(w, expected)


METHOD_CASES = [("rtn", dict(bits=4, group_size=32)), ("rtn", dict(bits=8, group_size=-1, sym=True)),
                ("gptq", dict(bits=4, group_size=32, act_order=True)), ("awq", dict(group_size=64)),
                ("smoothquant", {}), ("fp8", dict(per_row=True, act="per_token")), ("int8_weight_only", {}),
                ("rtn", dict(bits=4, group_size=-1, sym=True, act_bits=4, rotate=True)),
                ("rtn", dict(bits=4, group_size=-1, sym=True, act_bits=8, rotate="cayley", rotate_steps=2,
                             kv_bits=4)),
                ("gptq", dict(bits=4, group_size=-1, sym=True, act_bits=4, rotate="cayley", rotate_steps=2))]


@pytest.mark.parametrize("method,opts", METHOD_CASES)
def test_save_load_bit_exact_and_close_to_float(tmp_path, method, opts):
    ref_model = tiny_model(seed=2, tie=True)
    ids = calib(2, 16, seed=5)
    with torch.no_grad():
        ref = ref_model(ids)
    model = quantize(tiny_model(seed=2, tie=True), method, calib(), **opts)
    fmt = save_quantized(model, tmp_path)
    assert fmt == {"rtn": "gptq", "gptq": "gptq", "awq": "awq"}.get(method, "lab") or opts.get("rotate")
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == fmt
    loaded = lab_model.load(str(tmp_path))
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k].view(torch.uint8) if sd[k].dtype == torch.float8_e4m3fn
                                                            else sd[k], sd2[k].view(torch.uint8)
                                                            if sd2[k].dtype == torch.float8_e4m3fn else sd2[k]), k
    with torch.no_grad():
        out, out2 = model(ids), loaded(ids)
    assert torch.equal(out, out2)
    # Quantized logits stay near the float ones (tiny random model, so loose): W4A4 per-row RTN is
    # the coarsest case here (measured rel err ~0.3); a scrambled layer gives ~1.0.
    assert not rel(out, ref) >= 0.6, rel(out, ref)


def test_gptq_checkpoint_config_and_error_on_shape_mismatch(tmp_path):
    model = quantize(tiny_model(tie=True), "gptq", calib(), bits=4, group_size=32)
    save_quantized(model, tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    qc = cfg["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym")} == dict(
        quant_method="gptq", bits=4, group_size=32, desc_act=False, sym=False)
    qc["bits"] = 8  # packed 4-bit tensors no longer match the config
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match=r"qweight: shape \(8, 64\) disagrees with config.json \(bits=8"):
        load_quantized(tmp_path)


# ------------------------------------------------------------------------------------------------ rotations

@pytest.mark.parametrize("n", [64, 192, 96])
def test_hadamard_is_orthogonal(n):
    H = hadamard(n)
    assert float((H @ H.T - torch.eye(n, dtype=torch.float64)).abs().max()) < 1e-12


@pytest.mark.parametrize("tie,n_kv", [(True, 2), (False, 4)])
def test_rotated_model_equals_original(tie, n_kv):
    model = tiny_model(seed=3, tie=tie, n_kv_heads=n_kv)
    ids = calib(2, 24, seed=4)
    with torch.no_grad():
        ref = model(ids)
        rotate(model)
        out = model(ids)
    assert not model.config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight
    # fp32 rotations reassociate sums: measured max |diff| ~3e-7 on logits of magnitude ~1. A wrong R2 side
    # (R2 instead of R2^T) or a missed norm fold moves them by ~1e-1.
    assert_close(out, ref, Tol(atol=1e-5, rtol=1e-5), "rotated logits")


# -------------------------------------------------------------------------------------------------- errors

def test_bad_input_errors():
    with pytest.raises(QuantizationError, match="group_size=48 does not divide in_features=64 of model.layers.0"):
        quantize(tiny_model(tie=True), "rtn", group_size=48)
    with pytest.raises(QuantizationError, match=r"unsupported bits=3; choose one of \(2, 4, 8\)"):
        quantize(tiny_model(tie=True), "gptq", calib(), bits=3)
    with pytest.raises(QuantizationError, match="unknown quantization method 'gptq9'"):
        quantize(tiny_model(tie=True), "gptq9")
    with pytest.raises(QuantizationError, match=r"unknown option\(s\) \['alpha'\] for method 'rtn'"):
        quantize(tiny_model(tie=True), "rtn", alpha=0.5)
    with pytest.raises(QuantizationError, match="needs calibration token ids"):
        quantize(tiny_model(tie=True), "gptq", group_size=32)


def test_quant_linear_forward_matches_dequantized_reference():
    torch.manual_seed(6)
    lin = nn.Linear(64, 24, bias=True)
    codes = rtn_quantize(lin.weight, 4, 32, False)
    m = QuantLinear.from_quantized(lin, *codes, bits=4, group_size=32, sym=False)
    x = torch.randn(3, 5, 64)
    ref = x @ dequantize(*codes).T + lin.bias.detach()
    assert_close(m(x), ref, Tol(1e-5, 1e-5), "W4A16 forward")
    assert m.weight_bytes() == 24 * 64 // 2 + 2 * 24 * 2 + 2 * 24 // 2 + 24 * 4


def test_llm_serves_a_gptq_checkpoint(tmp_path):
    from scheduler import LLM, SamplingParams

    model = quantize(tiny_model(tie=True), "gptq", calib(), bits=4, group_size=32)
    save_quantized(model, tmp_path)
    llm = LLM(str(tmp_path))  # model.weights.load_model hands quantized checkpoints to quant.load_quantized
    assert isinstance(llm.engine.model.model.layers[0].self_attn.q_proj, QuantLinear)
    prompt = [1, 5, 9, 3]
    got = llm.generate([prompt], SamplingParams(max_tokens=5, temperature=0))[0].token_ids
    ids = torch.tensor([prompt])
    with torch.no_grad():  # greedy without a cache, on the in-memory quantized model
        for _ in range(5):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    assert list(got) == ids[0, 4:].tolist()
