"""Decode-step linears of Llama-3-8B under weight quantization: bf16 vs ours (Triton W4A16 g128, W8A16)
vs torch's own kernels (_weight_int4pack_mm, _weight_int8pack_mm, _scaled_mm FP8), GPU only.

    python3 -m bench.quant_decode --batches 1,8,64

What is timed: the four matmuls of one decoder layer (qkv 4096->6144, o 4096->4096, gate_up
4096->28672, down 14336->4096) with random weights, replayed from a CUDA graph with the L2
flushed (common.time_cuda_graph); weights of one layer (436 MB in bf16) are 9x the H200's L2, so
each replay streams them from HBM as a decode step does. tok/s = batch / (32 layers x layer time):
the linear part of a decode step (attention, norms and the LM head are not in it).
roofline_us = weight bytes read / measured copy bandwidth (common.measure_copy_bandwidth).
Every variant's output is checked against its own dequantized fp32 reference before it is timed
(WRONG -> exit 1); an alternative torch cannot run on this build is reported as skipped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from absl import app

from bench import common

_define = common.define_flag
_define("list", "batches", ["1", "8", "64"], "Decode batch sizes (tokens per step). Default 1, 8, 64.")
_define("integer", "iters", 50, "Timed graph replays per variant (default 50).")

SHAPES = (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336))
N_LAYERS, GROUP = 32, 128


@dataclass(frozen=True)
class Options:
    """One run, from the flags."""

    batches: tuple[str, ...]
    iters: int


def make_layer(seed: int = 0):
    """Random codes/scales for each shape, and every variant's prepared weights (dict per shape)."""
    import torch

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
                          w8=w8, s8=s8.bfloat16()))
    return layer


def variants(layer):
    """name -> (prepare() -> (fn(x) per shape list), bytes read per layer, reference fn per shape)."""
    import torch
    import torch.nn.functional as F

    from kernels.quant_matmul import w4a16_matmul, w8a16_matmul

    def deq4(L):
        gi = torch.arange(L["K"], device="cuda") // GROUP
        return ((L["q4"].float() - L["z4"].float()[gi].T) * L["s4"].float()[gi].T)  # (N, K)

    def deq8(L):
        return L["w8"].float() * L["s8"].float()[:, None]

    out = {}
    wbf = [deq4(L).bfloat16() for L in layer]
    out["bf16"] = ([lambda x, w=w: F.linear(x, w) for w in wbf], sum(w.numel() * 2 for w in wbf),
                   [lambda x, w=w: x.float() @ w.float().T for w in wbf])
    out["w4a16_g128_triton"] = (
        [lambda x, L=L: w4a16_matmul(x, L["qw4"], L["s4"], L["z4"], GROUP) for L in layer],
        sum(L["qw4"].numel() * 4 + L["s4"].numel() * 4 for L in layer),
        [lambda x, L=L: x.float() @ deq4(L).T for L in layer])
    out["w8a16_triton"] = ([lambda x, L=L: w8a16_matmul(x, L["w8"], L["s8"]) for L in layer],
                           sum(L["w8"].numel() + L["s8"].numel() * 2 for L in layer),
                           [lambda x, L=L: x.float() @ deq8(L).T for L in layer])
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
    return out


def main(argv) -> int:
    """The binary: flags -> Options -> run."""
    del argv
    return run(common.options_from_flags(Options))


def run(opts: Options) -> int:
    """Check, time, write; exit 1 on a WRONG variant."""
    import torch

    from parity.tolerance import Tol, compare

    if not torch.cuda.is_available():
        print("bench.quant_decode: needs a CUDA GPU; nothing to do on this machine")
        return 0
    batches = [int(b) for b in opts.batches]
    bw = common.measure_copy_bandwidth("cuda")
    layer = make_layer()
    rows, failures = [], []
    # bf16 outputs against fp32 references: K up to 14336 accumulated in fp32, result rounded to
    # bf16 (2^-8 relative); fp8 references quantize x the same way, so the same bound holds.
    tol = Tol(atol=5e-2, rtol=2e-2)
    for name, v in variants(layer).items():
        for M in batches:
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
    base = {r["batch"]: r.get("linear_tok_s") for r in rows if r["variant"] == "bf16"}
    for r in rows:
        if r.get("linear_tok_s") and base.get(r["batch"]):
            r["speedup_vs_bf16"] = r["linear_tok_s"] / base[r["batch"]]
    common.print_table(rows, ["variant", "batch", "status", "layer_us", "roofline_us", "GBps", "linear_tok_s",
                              "speedup_vs_bf16"], title=f"quant_decode (copy bandwidth {bw:.0f} GB/s)")
    out = common.results_dir("quant_decode", "cuda")
    summary = [{"name": f"quant_decode/{r['variant']}/b{r['batch']}/linear_tok_s", "value": r["linear_tok_s"],
                "unit": "tok/s", "speedup_vs_bf16": r.get("speedup_vs_bf16")} for r in rows if r.get("linear_tok_s")]
    common.write_results(out, "quant_decode", rows, summary, command=common.command_line("quant_decode"),
                         device=common.device_name("cuda"))
    series = {}
    for r in rows:
        if r.get("linear_tok_s"):
            xs, ys = series.setdefault(r["variant"], ([], []))
            xs.append(r["batch"])
            ys.append(r["linear_tok_s"])
    common.plot_panels(out / "quant_decode.png", [{"title": "Llama-3-8B decode linears, tok/s", "series": series,
                                                   "xlabel": "batch", "ylabel": "tok/s", "logx": True}])
    common.exit_on_failures("quant_decode", failures)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
