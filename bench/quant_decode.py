"""Llama-3-8B decode under quantization, GPU only: the linear layers of one decoder layer (kernel
table), then whole decode steps (decode table).

    python3 -m bench.quant_decode --batches 1,8,64 --decode_batches 1,8

Kernel table: bf16 vs ours (Triton W4A16 g128 on the GEMV layout: kernels/quant_gemv.py's
row-streaming kernel at batch 1, its tensor-core skinny tiles to 16, prefill tiles above; W8A16)
and, at batch 1, the same kernels as measured before the rework as `_v1` rows (W4: the split-K
kernels on GPTQ's layout; W8: the 2026-11-30 candidate set) vs torch's own kernels (_weight_int4pack_mm,
_weight_int8pack_mm, _scaled_mm FP8). What is timed: the four matmuls of one decoder layer (qkv 4096->6144, o 4096->4096, gate_up
4096->28672, down 14336->4096) with random weights, replayed from a CUDA graph with the L2
flushed (common.time_cuda_graph); weights of one layer (436 MB in bf16) are 9x the H200's L2, so
each replay streams them from HBM as a decode step does. tok/s = batch / (32 layers x layer time):
the linear part of a decode step (attention, norms and the LM head are not in it).
roofline_us = weight bytes read / measured copy bandwidth (common.measure_copy_bandwidth).
Batch-1 rows of kernels/gemv8.py's row-streaming GEMV: `w8a16_triton` tunes it together with the split-K
kernels (`w8a16_triton_splitk`: the split-K set alone, the before row), the `_gemv` W8A8 / FP8 rows likewise
with act_quant_gemv's kernels; `fp8_weight_only_triton_gemv` (e4m3 weights, per-row scales, bf16 x) and
`bf16_triton_gemv` (bf16 weights through the same kernel, beside cuBLAS's `bf16`; measured only, not in the model).
Every variant's output is checked against its own dequantized fp32 reference before it is timed
(WRONG -> exit 1); an alternative torch cannot run on this build is reported as skipped.

Decode table (decode_rows): a whole decode step of the Llama-3-8B shape (random weights, all 32
layers, fused qkv / gate_up, bf16 LM head, static KV cache at --context tokens, CUDA graph) for
each of DECODE_VARIANTS: bf16; W4A16 g128 RTN through our Triton kernels (GEMV layout; `_v1`: GPTQ
layout, split-K kernels, the before row) and through torch's tinygemm; W8A16 (int8 per channel) through ours; W8A8 int8 (SmoothQuant's arithmetic, RTN weights,
per-token dynamic activations) through torch._int_mm; FP8 weight-only (e4m3 per-row weights, bf16
activations: quant.fast_linear's fp8_wo, kernels/gemv8.py); W8A16 and FP8 weight-only again with the LM
head quantized too (`_lm_head_q`, quant.quantize(lm_head=True); every other row keeps the bf16 LM head;
these three at batch 1 only: BATCH1_DECODE); FP8 row-wise through _scaled_mm (at batch 1
both through kernels.act_quant_gemv, the quantization fused: quant.fast_linear's one-token path). One model at
a time, quantized on the GPU by quant.quantize (RTN: fast), freed before the next. Check: the
prompt is prefilled and one decode step run eagerly with quant/'s reference layers (dequantize,
then a bf16 matmul: "the dequantized-weights model"); then quant.fast_linear.to_fast swaps in the
kernel layers and the graphed step must give the same logits within band_for(variant) (weight-only:
parity.ties.TIE_BAND, two bf16 computations of one model, 5e-2 of max|logit|; W8A8 / FP8: 0.2, measured,
see ACT_QUANT_BAND) and a greedy token within the band of the reference's maximum (tie_gaps). Roofline: the bytes one step reads (every weight but the embedding
table, plus the KV cache) over the measured copy bandwidth.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from absl import app

from bench import common

_define = common.define_flag
_define("list", "batches", ["1", "8", "64"], "Decode batch sizes (tokens per step). Default 1, 8, 64.")
_define("integer", "iters", 50, "Timed graph replays per variant (default 50).")
_define("list", "decode_batches", ["1", "8"], "Batch sizes of the whole-decode-step table (empty: skip it).")
_define("list", "decode_variants", None, "Variants of the decode table (default: all of DECODE_VARIANTS).")
_define("integer", "context", 128, "Tokens in the KV cache before the timed decode step (default 128).")
_define("string", "decode_preset", "llama3-8b", "Model shape of the decode table (a model.config preset).")
_define("boolean", "layer_table", True, "Time the one-layer kernel table (default on).")
_define("list", "layer_variants", None, "Variants of the layer table (default: all of variants()).")
_define("list", "print_candidates", [], "Tuner kernels (e.g. w4g,w4gt) whose every candidate's time is printed.")

# name -> (quant.quantize method or None, its options, quant.fast_linear backend or None)
W4_OPTS = dict(bits=4, group_size=128, sym=False)
DECODE_VARIANTS = {
    "bf16": (None, {}, None),
    "w4a16_g128_triton": ("rtn", W4_OPTS, "triton"),
    "w4a16_g128_triton_v1": ("rtn", W4_OPTS, "triton_v1"),
    "w4a16_g128_torch_int4pack": ("rtn", W4_OPTS, "int4pack"),
    # the LM head quantized too (W4 g128 on the GEMV layout: 128,256 x 4,096, 263 MB of words instead of 1.05 GB)
    "w4a16_g128_triton_lm_head_q": ("rtn", dict(W4_OPTS, lm_head=True), "triton"),
    "w8a16_triton": ("int8_weight_only", {}, "triton"),
    "w8a8_int8_int_mm": ("rtn", dict(bits=8, group_size=-1, sym=True, act_bits=8), "int_mm"),
    "fp8_w8a8_rowwise_scaled_mm": ("fp8", dict(per_row=True, act="per_token"), "scaled_mm"),
    # FP8 e4m3 weight-only (per-row scales, bf16 activations) through kernels/gemv8.py's GEMV; and both
    # 8-bit weight-only variants with the LM head quantized too (`_lm_head_q`: quant.quantize(lm_head=True),
    # as torchao's int8 weight-only on gpt-fast quantizes it; every other row keeps a bf16 LM head).
    "fp8_weight_only_triton": ("fp8", dict(per_row=True, act=None), "fp8_wo"),
    "w8a16_triton_lm_head_q": ("int8_weight_only", dict(lm_head=True), "triton"),
    "fp8_weight_only_triton_lm_head_q": ("fp8", dict(per_row=True, act=None, lm_head=True), "fp8_wo"),
}
# Decode variants timed at batch 1 only (the GEMV work's batch; keeps bench/gpu_quant.sh inside its budget).
BATCH1_DECODE = ("fp8_weight_only_triton", "w8a16_triton_lm_head_q", "fp8_weight_only_triton_lm_head_q")
# Kernel-table variants timed at batch 1 only: the before rows (`_v1`, `_splitk`) and the GEMVs (`_gemv`).
BATCH1_SUFFIXES = ("_v1", "_gemv", "_splitk")
# Whole-step logit bands (max|logit - reference| / max|reference logit|, and the greedy token's gap).
# Weight-only variants: parity.ties.TIE_BAND[bf16] (5e-2), two bf16 computations of one model.
# Activation-quantized variants (W8A8, FP8) re-round every activation to int8 / e4m3, so a bf16-sized
# difference flips some roundings by a whole int8 / e4m3 step and the two computations drift further:
# measured on a CPU (2026-11-29; the Llama-3 shape at dim 512, 32 layers, batches 1 and 4, this
# code): correct W8A8 0.041-0.042, correct FP8 0.081-0.088 (greedy gaps <= 0.053); planted faults
# (W8A8 zero point off by one, FP8 weight scales of the neighbouring row) 0.37-0.55. 0.2 is 2.3x the
# largest correct error and 1.85x below the smallest fault.
ACT_QUANT_BAND = 0.2
SHAPES = (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336))
N_LAYERS, GROUP = 32, 128


@dataclass(frozen=True)
class Options:
    """One run, from the flags."""

    batches: tuple[str, ...]
    iters: int
    decode_batches: tuple[str, ...] = ("1", "8")
    decode_variants: Optional[tuple[str, ...]] = None
    context: int = 128
    decode_preset: str = "llama3-8b"
    layer_table: bool = True
    layer_variants: Optional[tuple[str, ...]] = None
    print_candidates: tuple[str, ...] = ()


def make_layer(seed: int = 0):
    """Random codes/scales for each shape, and every variant's prepared weights (dict per shape)."""
    import torch

    from kernels.quant_gemv import pack_w4_gemv
    from kernels.quant_matmul import pack_w4

    g = torch.Generator(device="cuda").manual_seed(seed)
    layer = []
    for name, N, K in SHAPES:
        q4 = torch.randint(0, 16, (N, K), device="cuda", generator=g)
        s4 = torch.rand(K // GROUP, N, device="cuda", generator=g) * 0.002 + 0.0005
        z4 = torch.randint(0, 16, (K // GROUP, N), device="cuda", generator=g).float()
        w8 = torch.randint(-127, 128, (N, K), device="cuda", generator=g, dtype=torch.int8)
        s8 = torch.rand(N, device="cuda", generator=g) * 0.0002 + 0.00005
        layer.append(dict(name=name, N=N, K=K, q4=q4, s4=s4.bfloat16(), z4=z4.bfloat16(), qw4=pack_w4(q4),
                          qw4g=pack_w4_gemv(q4), s4g=s4.T.bfloat16().contiguous(), z4g=z4.T.bfloat16().contiguous(),
                          w8=w8, s8=s8.bfloat16()))
    return layer


def variants(layer):
    """name -> (prepare() -> (fn(x) per shape list), bytes read per layer, reference fn per shape)."""
    import torch
    import torch.nn.functional as F

    from kernels.gemv8 import bf16_gemv, fp8_wo_gemv
    from kernels.quant_gemv import CONFIGS_W8_V1, w8a16_skinny
    from kernels.quant_matmul import w4a16_matmul, w4a16_matmul_gemv, w8a16_matmul

    def deq4(L):
        gi = torch.arange(L["K"], device="cuda") // GROUP
        return ((L["q4"].float() - L["z4"].float()[gi].T) * L["s4"].float()[gi].T)  # (N, K)

    def deq8(L):
        return L["w8"].float() * L["s8"].float()[:, None]

    out = {}
    wbf = [deq4(L).bfloat16() for L in layer]
    out["bf16"] = ([lambda x, w=w: F.linear(x, w) for w in wbf], sum(w.numel() * 2 for w in wbf),
                   [lambda x, w=w: x.float() @ w.float().T for w in wbf])
    # bf16 through kernels/gemv8.py's row-streaming GEMV (issue #14's batch-1 question; not in the model)
    out["bf16_triton_gemv"] = ([lambda x, w=w: bf16_gemv(x, w) for w in wbf], out["bf16"][1], out["bf16"][2])
    # ours now: the GEMV layout (row-streaming kernel at batch 1); _v1: the split-K kernels on GPTQ's
    # layout with the 2026-11-30 candidate sets (before/after in one run).
    out["w4a16_g128_triton"] = (
        [lambda x, L=L: w4a16_matmul_gemv(x, L["qw4g"], L["s4g"], L["z4g"]) for L in layer],
        sum(L["qw4g"].numel() * 4 + L["s4g"].numel() * 4 for L in layer),
        [lambda x, L=L: x.float() @ deq4(L).T for L in layer])
    out["w4a16_g128_triton_v1"] = (
        [lambda x, L=L: w4a16_matmul(x, L["qw4"], L["s4"], L["z4"], GROUP) for L in layer],
        sum(L["qw4"].numel() * 4 + L["s4"].numel() * 4 for L in layer),
        [lambda x, L=L: x.float() @ deq4(L).T for L in layer])
    out["w8a16_triton"] = ([lambda x, L=L: w8a16_matmul(x, L["w8"], L["s8"]) for L in layer],
                           sum(L["w8"].numel() + L["s8"].numel() * 2 for L in layer),
                           [lambda x, L=L: x.float() @ deq8(L).T for L in layer])
    out["w8a16_triton_v1"] = ([lambda x, L=L: w8a16_skinny(x, L["w8"], L["s8"], sets=CONFIGS_W8_V1) for L in layer],
                              out["w8a16_triton"][1], out["w8a16_triton"][2])
    # W8A16 at batch 1 before kernels/gemv8.py: quant_gemv's split-K candidates alone (CONFIGS_W8)
    out["w8a16_triton_splitk"] = ([lambda x, L=L: w8a16_skinny(x, L["w8"], L["s8"]) for L in layer],
                                  out["w8a16_triton"][1], out["w8a16_triton"][2])
    # torch's tinygemm int4: w = (q - 8) * scale + zero; build its operands from our codes.
    try:
        fns, refs = [], []
        for L in layer:
            q = L["q4"].to(torch.int32)
            packed = torch._convert_weight_to_int4pack(((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8), 8)
            zero = ((8 - L["z4"].float()) * L["s4"].float())  # (G, N): (q - z) s = (q - 8) s + (8 - z) s
            sz = torch.stack([L["s4"].float(), zero], dim=-1).bfloat16().contiguous()  # (G, N, 2)
            fns.append(lambda x, p=packed, sz=sz: torch._weight_int4pack_mm(x, p, GROUP, sz))
            refs.append(lambda x, L=L: x.float() @ deq4(L).T)
        out["torch_int4pack_g128"] = (fns, sum(L["qw4"].numel() * 4 + L["s4"].numel() * 4 for L in layer), refs)
    except (RuntimeError, AttributeError) as e:
        out["torch_int4pack_g128"] = common.failure_status(e)
    out["torch_int8pack"] = ([lambda x, L=L: torch._weight_int8pack_mm(x, L["w8"], L["s8"]) for L in layer],
                             sum(L["w8"].numel() + L["s8"].numel() * 2 for L in layer),
                             [lambda x, L=L: x.float() @ deq8(L).T for L in layer])
    from quant.fast_linear import int8_matmul, quantize_tokens_int8

    def w8a8(x, L):  # SmoothQuant's W8A8 arithmetic: per-token int8 x, per-channel int8 w, int32 accumulate
        xq, sx = quantize_tokens_int8(x)
        return (int8_matmul(xq, L["w8"].T).float() * sx * L["s8"].float()).to(x.dtype)

    def w8a8_ref(x, L):
        xq, sx = quantize_tokens_int8(x)
        return (xq.float() * sx) @ deq8(L).T

    out["w8a8_int8_int_mm"] = ([lambda x, L=L: w8a8(x, L) for L in layer],
                               sum(L["w8"].numel() + L["s8"].numel() * 2 for L in layer),
                               [lambda x, L=L: w8a8_ref(x, L) for L in layer])
    fp8 = []
    for L in layer:
        w = deq8(L)
        ws = (w.abs().amax(dim=1, keepdim=True) / 448.0)  # per-row weight scale (N, 1)
        fp8.append(((w / ws).to(torch.float8_e4m3fn), ws.T.contiguous()))

    def fp8_mm(x, wq, ws):
        xs = (x.float().abs().amax(dim=1, keepdim=True) / 448.0).clamp(min=1e-12)  # per-token (M, 1)
        xq = (x.float() / xs).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, wq.T, scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)

    def fp8_ref(x, wq, ws):
        xs = (x.float().abs().amax(dim=1, keepdim=True) / 448.0).clamp(min=1e-12)
        return ((x.float() / xs).to(torch.float8_e4m3fn).float() * xs) @ (wq.float() * ws.T).T

    out["fp8_w8a8_rowwise_scaled_mm"] = ([lambda x, p=p: fp8_mm(x, *p) for p in fp8],
                                          sum(p[0].numel() + p[1].numel() * 4 for p in fp8),
                                          [lambda x, p=p: fp8_ref(x, *p) for p in fp8])
    # The same W8A8 arithmetic at one token through kernels.act_quant_gemv (quantization fused into
    # the GEMV; what quant.fast_linear's W8A8 / FP8 layers run at batch 1): `_gemv` rows, batch 1 only.
    from kernels.act_quant_gemv import fp8_gemv, w8a8_gemv

    out["w8a8_int8_triton_gemv"] = ([lambda x, L=L: w8a8_gemv(x, L["w8"], L["s8"]) for L in layer],
                                    out["w8a8_int8_int_mm"][1], out["w8a8_int8_int_mm"][2])
    out["fp8_w8a8_rowwise_triton_gemv"] = ([lambda x, p=p: fp8_gemv(x, p[0], p[1].reshape(-1)) for p in fp8],
                                            out["fp8_w8a8_rowwise_scaled_mm"][1], out["fp8_w8a8_rowwise_scaled_mm"][2])
    # FP8 weight-only: e4m3 per-row weights, bf16 x unquantized (quant.fast_linear's "fp8_wo" layer)
    out["fp8_weight_only_triton_gemv"] = ([lambda x, p=p: fp8_wo_gemv(x, p[0], p[1].reshape(-1)) for p in fp8],
                                           out["fp8_w8a8_rowwise_scaled_mm"][1],
                                           [lambda x, p=p: x.float() @ (p[0].float() * p[1].T).T for p in fp8])
    return out


def main(argv) -> int:
    """The binary: flags -> Options -> run."""
    del argv
    return run(common.options_from_flags(Options))


def layer_rows(opts: Options, bw: float) -> tuple[list[dict], list[str]]:
    """The kernel table: every variant of variants() at every --batches, checked then timed."""
    import torch

    from parity.tolerance import Tol, compare

    batches = [int(b) for b in opts.batches]
    layer = make_layer()
    rows, failures = [], []
    # bf16 outputs against fp32 references: K up to 14336 accumulated in fp32, result rounded to
    # bf16 (2^-8 relative); fp8 references quantize x the same way, so the same bound holds.
    tol = Tol(atol=5e-2, rtol=2e-2)
    for name, v in variants(layer).items():
        if opts.layer_variants and name not in opts.layer_variants:
            continue
        for M in batches:
            if name.endswith(BATCH1_SUFFIXES) and M != 1:  # batch-1 rows (the GEMV work's batch)
                continue
            row = {"variant": name, "batch": M}
            if isinstance(v, str):
                row["status"] = f"skipped: {v}"
                rows.append(row)
                continue
            fns, nbytes, refs = v
            x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
            xd = torch.randn(M, 14336, device="cuda", dtype=torch.bfloat16)
            ins = [x, x, x, xd]
            try:
                for fn, ref, xi, (shape, _, _) in zip(fns, refs, ins, SHAPES):
                    c = compare(fn(xi).float(), ref(xi), tol, f"{name} {shape} M={M}")
                    if not c.ok:
                        raise AssertionError(str(c))
                t = common.time_cuda_graph(lambda: [fn(xi) for fn, xi in zip(fns, ins)], iters=opts.iters)
            except AssertionError as e:
                row["status"] = f"WRONG: {e}"
                failures.append(f"{name}/M={M}")
                rows.append(row)
                continue
            except Exception as e:  # an op this torch build lacks on CUDA: reported, not fatal
                row["status"] = f"skipped: {common.failure_status(e)}"
                rows.append(row)
                continue
            us = t["p50"]
            row.update(status="ok", layer_us=us, MB_read=nbytes / 1e6, GBps=nbytes / us / 1e3,
                       roofline_us=nbytes / (bw * 1e3), linear_tok_s=M / (N_LAYERS * us * 1e-6))
            rows.append(row)
    del layer
    torch.cuda.empty_cache()
    base = {r["batch"]: r.get("linear_tok_s") for r in rows if r["variant"] == "bf16"}
    for r in rows:
        if r.get("linear_tok_s") and base.get(r["batch"]):
            r["speedup_vs_bf16"] = r["linear_tok_s"] / base[r["batch"]]
    return rows, failures


def step_bytes(net, batch: int, context: int) -> int:
    """Bytes one decode step reads: every parameter and buffer but the embedding table (B rows of it),
    the KV caches and RoPE tables (shared tensors once), plus the KV cache up to context."""
    import torch

    from cache.static_cache import StaticKVCache

    seen, n = set(), 0
    for mod in net.modules():
        if isinstance(mod, (torch.nn.Embedding, StaticKVCache)) or mod is net:
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                n += t.numel() * t.element_size()
    c = net.config
    kv = 2 * c.n_layers * batch * c.n_kv_heads * c.head_dim * context * net.model.embed_tokens.weight.element_size()
    return n + kv


def band_for(variant: str) -> float:
    """The whole-step logit band of a decode variant (ACT_QUANT_BAND's comment)."""
    import torch

    from parity.ties import TIE_BAND

    _, qopts, _ = DECODE_VARIANTS[variant]
    return ACT_QUANT_BAND if (qopts.get("act_bits") or qopts.get("act")) else TIE_BAND[torch.bfloat16]


def decode_rows(variant_names, batches, context: int, preset, device: str, iters: int,
                bw: Optional[float], warmup: int = 3) -> tuple[list[dict], list[str]]:
    """The decode table (module docstring): per variant build, quantize, check against the reference
    layers, swap in the kernel layers, check the graphed step, time it. preset: a model.config preset
    name or ModelConfig; a CPU device runs the same code eagerly (the tests' tiny shapes)."""
    import torch

    from decoding.fast import FastGenerator
    from model.random_weights import random_model
    from parity.ties import tie_gaps
    from quant import quantize
    from quant.fast_linear import to_fast

    cuda = common.is_cuda(device)
    dtype = torch.bfloat16
    rows, failures = [], []
    for name in variant_names:
        method, qopts, backend = DECODE_VARIANTS[name]
        band = band_for(name)
        net = random_model(preset, device=device, dtype=dtype, seed=0, max_seq_len=context + 8)
        net.fuse_projections()
        gen = step = None
        try:
            if method:  # outside inference_mode: the reference layers' weight cache reads version counters
                quantize(net, method, **qopts)
            with torch.inference_mode():
                bs = [1] if name in BATCH1_DECODE and 1 in batches else batches
                gen = FastGenerator(net, max(bs), context + 8, cuda_graph=cuda, fuse=False)
                g = torch.Generator(device="cpu").manual_seed(1)
                ids = torch.randint(0, net.config.vocab_size, (max(bs), context + 1), generator=g).to(device)
                net(ids[:, :context], torch.arange(context, device=device))  # prefill, reference layers
                ref = net(ids[:, context:], torch.tensor([context], device=device))[:, -1].float()  # (B, V)
                if backend:
                    to_fast(net, backend)  # the reference layers (and their dequantized weights) go
                if cuda:
                    torch.cuda.empty_cache()
            for B in bs:
                row = {"variant": name, "batch": B, "context": context}
                step = gen.step_for(B)
                with torch.inference_mode():
                    got = step(ids[:B, context], context).float()
                want = ref[:B]
                err = float((got - want).abs().max() / want.abs().max())
                gap = float(tie_gaps(want, got.argmax(-1).tolist()).max())
                row.update(logit_err=err, greedy_gap=gap,
                           greedy_agree=float((got.argmax(-1) == want.argmax(-1)).float().mean()))
                if not (err <= band and gap <= band):
                    row["status"] = (f"WRONG: logits differ from the dequantized reference by {err:.3g} of "
                                     f"max|logit| (greedy gap {gap:.3g}; band {band})")
                    failures.append(f"decode/{name}/b{B}")
                    rows.append(row)
                    continue
                timer = common.time_cuda if cuda else common.time_cpu
                with torch.inference_mode():
                    t = timer(lambda: step(ids[:B, context], context), warmup=warmup, iters=iters, flush_l2=False)
                nbytes = step_bytes(net, B, context + 1)
                row.update(status="ok", step_us=t["p50"], p10_us=t["p10"], p90_us=t["p90"], tok_s=B / (t["p50"] * 1e-6),
                           GB_read=nbytes / 1e9)
                if bw:
                    row.update(roofline_tok_s=B * bw * 1e9 / nbytes, of_roofline=nbytes / (t["p50"] * 1e3) / bw)
                rows.append(row)
        except Exception as e:  # a kernel this torch build lacks, out of memory: the row says which
            rows.append({"variant": name, "batch": "-", "status": common.failure_status(e)})
            failures.append(f"decode/{name}")
        finally:
            if gen is not None:
                gen.close()
            del net, gen, step
            if cuda:
                torch.cuda.empty_cache()
    base = {r["batch"]: r["tok_s"] for r in rows if r["variant"] == "bf16" and r.get("tok_s")}
    for r in rows:
        if r.get("tok_s") and base.get(r["batch"]):
            r["speedup_vs_bf16"] = r["tok_s"] / base[r["batch"]]
    return rows, failures


def run(opts: Options) -> int:
    """Check, time, write; exit 1 on a WRONG variant."""
    import torch

    from kernels.quant_gemv import tuned_table

    if not torch.cuda.is_available():
        print("bench.quant_decode: needs a CUDA GPU; nothing to do on this machine")
        return 0
    names = list(opts.decode_variants or DECODE_VARIANTS)
    unknown = sorted(set(names) - set(DECODE_VARIANTS))
    if unknown:
        raise app.UsageError(f"--decode_variants: unknown {unknown}; choose from {sorted(DECODE_VARIANTS)}")
    bw = common.measure_copy_bandwidth("cuda")
    out = common.results_dir("quant_decode", "cuda")
    command, device = common.command_line("quant_decode"), common.device_name("cuda")
    failures, summary, panels = [], [], []
    if opts.layer_table:
        rows, fails = layer_rows(opts, bw)
        failures += fails
        common.print_table(rows, ["variant", "batch", "status", "layer_us", "roofline_us", "GBps", "linear_tok_s",
                                  "speedup_vs_bf16"], title=f"quant_decode: one layer's linears (copy bandwidth "
                                                            f"{bw:.0f} GB/s)")
        summary += [{"name": f"quant_decode/{r['variant']}/b{r['batch']}/linear_tok_s", "value": r["linear_tok_s"],
                     "unit": "tok/s", "speedup_vs_bf16": r.get("speedup_vs_bf16")} for r in rows if r.get("linear_tok_s")]
        common.write_results(out, "quant_decode", rows, summary, command=command, device=device)
        panels.append({"title": "Llama-3-8B decode linears, tok/s", "series": _series(rows, "linear_tok_s"),
                       "xlabel": "batch", "ylabel": "tok/s", "logx": True})
    decode_batches = [int(b) for b in opts.decode_batches if str(b).strip()]
    if decode_batches:
        rows, fails = decode_rows(names, decode_batches, opts.context, opts.decode_preset, "cuda", opts.iters, bw)
        failures += fails
        common.print_table(rows, ["variant", "batch", "status", "step_us", "tok_s", "speedup_vs_bf16", "roofline_tok_s",
                                  "of_roofline", "GB_read", "logit_err", "greedy_gap"],
                           title=f"quant_decode: whole {opts.decode_preset} decode steps, CUDA graphs, context "
                                 f"{opts.context}")
        dsum = [{"name": f"quant_decode/step/{r['variant']}/b{r['batch']}/tok_s", "value": r["tok_s"], "unit": "tok/s",
                 "speedup_vs_bf16": r.get("speedup_vs_bf16"), "roofline_tok_s": r.get("roofline_tok_s")}
                for r in rows if r.get("tok_s")]
        common.write_results(out, "quant_decode_step", rows, dsum, command=command, device=device)
        panels.append({"title": f"{opts.decode_preset} decode step, tok/s", "series": _series(rows, "tok_s"),
                       "xlabel": "batch", "ylabel": "tok/s", "logx": True})
    tuned = tuned_table()
    if tuned:
        common.print_table([r for r in tuned if r.get("chosen") or r.get("error")],
                           ["kernel", "N", "K", "m_bucket", "config", "us", "error"],
                           title="skinny kernel configs chosen (all candidates in quant_decode_tuned.csv)")
        common.write_results(out, "quant_decode_tuned", tuned, [], command=command, device=device)
        print_candidates(tuned, opts.print_candidates)
    if panels:
        common.plot_panels(out / "quant_decode.png", panels)
    common.exit_on_failures("quant_decode", failures)
    return 0


def print_candidates(tuned: list[dict], kernels) -> None:
    """Every timed / rejected candidate of the tuner kernels named (--print_candidates), per shape, with
    its time as a multiple of the shape's fastest."""
    rows = [dict(r) for r in tuned if r["kernel"] in set(kernels)]
    best = {}
    for r in rows:
        if r.get("us"):
            k = (r["kernel"], r["N"], r["K"], r["m_bucket"])
            best[k] = min(best.get(k, float("inf")), r["us"])
    for r in rows:
        if r.get("us"):
            r["x_best"] = r["us"] / best[(r["kernel"], r["N"], r["K"], r["m_bucket"])]
    rows.sort(key=lambda r: (r["kernel"], r["m_bucket"], r["N"], r["K"], r.get("us") or float("inf")))
    if rows:
        common.print_table(rows, ["kernel", "N", "K", "m_bucket", "config", "us", "x_best", "chosen", "error"],
                           title=f"every candidate of {', '.join(kernels)} (checked, then timed)")


def _series(rows, key):
    series = {}
    for r in rows:
        if r.get(key):
            xs, ys = series.setdefault(r["variant"], ([], []))
            xs.append(r["batch"])
            ys.append(r[key])
    return series


if __name__ == "__main__":
    sys.exit(app.run(main))
