"""LLM(path) on a quantized checkpoint: the kernel layers (quant.fast_linear.auto_fast) on CUDA, the
reference layers on a CPU; which backend runs which quantized model."""

import pytest
import torch
from torch import nn

from model.config import ModelConfig
from model.llama import Transformer
from quant import QuantLinear, load_quantized, quantize, save_quantized
from quant.fast_linear import W4A16Linear, auto_fast, fast_backend

CUDA = torch.cuda.is_available()


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_name("tiny").replace(tie_word_embeddings=True))
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    return model.eval()


def calib():
    return torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method,opts,backend", [
    ("rtn", dict(bits=4, group_size=32), "triton"),
    ("int8_weight_only", {}, "triton"),
    ("smoothquant", {}, "int_mm"),
    ("fp8", dict(per_row=True, act="per_token"), "scaled_mm"),
    ("fp8", dict(per_row=True, act=None), "fp8_wo"),
    ("fp8", dict(per_row=False, act="per_tensor"), None),
    ("rtn", dict(bits=4, group_size=-1, sym=True, act_bits=4, rotate=True), None),
    ("gptq", dict(bits=4, group_size=32, act_order=True), None),
])
def test_fast_backend_choice(method, opts, backend):
    assert fast_backend(quantize(tiny_model(), method, calib(), **opts)) == backend
    assert fast_backend(tiny_model()) is None  # nothing quantized


def test_cpu_model_is_left_alone():
    m = quantize(tiny_model(), "rtn", bits=4, group_size=32)
    assert auto_fast(m) is None and isinstance(m.model.layers[0].mlp.up_proj, QuantLinear)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (Triton W4A16 kernels)")
def test_llm_loads_w4a16_checkpoint_onto_the_kernels_gpu(tmp_path):
    from scheduler import LLM, SamplingParams

    save_quantized(quantize(tiny_model(3), "rtn", bits=4, group_size=32), tmp_path)
    llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16)
    layer = llm.engine.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, W4A16Linear) and isinstance(layer.mlp.down_proj, W4A16Linear)
    ref = load_quantized(str(tmp_path), device="cuda", dtype=torch.bfloat16)  # the reference layers
    fast = load_quantized(str(tmp_path), device="cuda", dtype=torch.bfloat16)  # no caches: callable directly
    assert auto_fast(fast) == "triton"
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2)).cuda()
    with torch.no_grad():
        a, b = fast(ids).float(), ref(ids).float()
    # bf16 kernels vs bf16 dequantize-then-matmul: measured rel err ~3e-3; a wrong packing or a layer
    # left unconverted in the wrong orientation gives ~1.
    assert not float((a - b).norm() / b.norm()) > 3e-2
    out = llm.generate([[1, 5, 9, 3]], SamplingParams(max_tokens=6, temperature=0))[0]
    assert len(out.token_ids) == 6
    llm.close()
