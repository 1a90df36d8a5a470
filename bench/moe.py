"""Fused MoE (kernels/fused_moe.py) against the per-expert loop (model/moe.py) at a Mixtral-8x7B
layer shape, 1 to 512 tokens, against the roofline of the expert weights read.

    python3 -m bench.moe                              # GPU: H 4096, I 14336, 8 experts, top-2, bf16
    bazel run //bench:moe -- --tokens=1,16,512

Question: how close does one MoE layer come to reading each routed expert's weights once?
At decode sizes a layer is memory-bound: its floor is bytes / bandwidth, with bytes = the
experts the batch routes to (distinct ids) x 3 H I x element size (plus x, negligible), and the
bandwidth the measured device-to-device copy (bench.common.measure_copy_bandwidth). At 512 tokens
all 8 experts are read and 2 N k 3 H I flops approach the measured matmul ceiling: the floor
is the larger of the two. Each variant's output is checked against the fp64 loop with
parity/moe_cases.py's per-dtype tolerance before it is timed; a WRONG one exits 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from absl import app

from bench import common

_define = common.define_flag
_define("list", "tokens", ["1", "2", "4", "8", "16", "32", "64", "128", "256", "512"],
        "Token counts (rows of the layer input). Default 1..512: decode batches to a prefill chunk.")
_define("integer", "experts", 8, "Experts (Mixtral-8x7B: 8).")
_define("integer", "top_k", 2, "Experts per token (Mixtral: 2).")
_define("integer", "hidden", 4096, "Hidden size H (Mixtral-8x7B: 4096).")
_define("integer", "inter", 14336, "Expert intermediate size I (Mixtral-8x7B: 14336).")
_define("string", "dtype", "bf16", "bf16, fp16 or fp32 (default bf16: Mixtral's dtype).")
_define("string", "device", "auto", "cuda, cuda:N, or cpu (the CPU needs TRITON_INTERPRET=1 and tiny --hidden/--inter).")
_define("integer", "warmup", 5, "Untimed calls per case (Triton compiles on the first).")
_define("integer", "iters", 20, "Timed calls per case (20: stable p50 at these ms-scale calls).")
_define("boolean", "plot", True, "Write moe.png (time and bandwidth vs tokens).")


@dataclass(frozen=True)
class Options:
    """One run, as the flags give it."""

    tokens: tuple[str, ...]
    experts: int
    top_k: int
    hidden: int
    inter: int
    dtype: str
    device: str | None
    warmup: int
    iters: int
    plot: bool


def expert_bytes(ids: torch.Tensor, hidden: int, inter: int, elem: int) -> int:
    """Bytes of expert weights a batch must read: distinct routed experts x (w1, w3, w2)."""
    return int(torch.unique(ids).numel()) * 3 * hidden * inter * elem


def run(opts: Options) -> int:
    """Check, time and write one row per (tokens, variant); 0, 1 if a variant is WRONG/FAILED, 2 on bad flags."""
    from kernels import _triton
    from kernels.fused_moe import config_for as fused_config
    from kernels.fused_moe import fused_moe
    from model.moe import moe_reference
    from parity.moe_cases import TOLERANCE, moe_inputs
    from parity.tolerance import assert_close

    try:
        tokens = [int(t) for t in opts.tokens]
        if min(tokens) < 1 or opts.top_k > opts.experts or min(opts.experts, opts.top_k, opts.hidden, opts.inter) < 1:
            raise ValueError("--tokens, --experts, --top_k, --hidden, --inter must be positive, top_k <= experts")
        device, dtype = common.device_and_dtype(opts.device, opts.dtype)
    except (ValueError, app.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not _triton.can_run(torch.empty(0, device=device)):
        print(f"error: the fused kernel is Triton: --device {device} needs CUDA, or the CPU with TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2
    bw = common.measure_copy_bandwidth(device)  # GB/s, read + write counted
    tflops = common.measure_matmul_tflops(device, dtype if dtype != torch.float32 else torch.float32)
    print(f"{common.device_name(device)}: copy {bw:,.0f} GB/s, {common.dtype_name(dtype)} matmul {tflops:,.1f} TFLOP/s")
    elem = torch.finfo(dtype).bits // 8
    variants = {"loop": moe_reference, "fused": fused_moe}
    rows, failures = [], []
    # One input and one routing (a seeded random router) for the largest n; n tokens are its first n rows.
    x_all, w13, w2, w_all, ids_all = moe_inputs(max(tokens), opts.experts, opts.hidden, opts.inter, opts.top_k,
                                                dtype, device)
    w13_64, w2_64 = w13.double(), w2.double()
    for n in tokens:
        x, weights, ids = x_all[:n].contiguous(), w_all[:n].contiguous(), ids_all[:n].contiguous()
        ref = moe_reference(x.double(), w13_64, w2_64, weights.double(), ids)
        nbytes = expert_bytes(ids, opts.hidden, opts.inter, elem)
        flops = 2 * n * opts.top_k * 3 * opts.hidden * opts.inter
        floor_us = max(nbytes / (bw * 1e9), flops / (tflops * 1e12)) * 1e6
        for name, fn in variants.items():
            row = {"tokens": n, "variant": name, "dtype": common.dtype_name(dtype), "experts_read": int(torch.unique(ids).numel()),
                   "weight_bytes": nbytes, "floor_us": floor_us}
            try:
                assert_close(fn(x, w13, w2, weights, ids), ref, TOLERANCE[dtype], f"{name} {n} tokens")
                t = common.time_fn(lambda fn=fn: fn(x, w13, w2, weights, ids), device, opts.warmup, opts.iters)
                row.update(status="ok", p50_us=t["p50"], p10_us=t["p10"], p90_us=t["p90"],
                           gbps=nbytes / (t["p50"] * 1e-6) / 1e9, of_floor=floor_us / t["p50"])
                if name == "fused":  # the tiles the first call chose: (BLOCK_M, N, K, GROUP_M, warps, stages)
                    row["tiles"] = "/".join(map(str, fused_config(x, w13, w2, weights, ids)))
            except Exception as e:  # noqa: BLE001 - a variant's failure is a row, the others still run
                row["status"] = common.failure_status(e)
                failures.append(f"{name}@{n}")
            rows.append(row)
    common.print_table(rows, ["tokens", "variant", "status", "experts_read", ("p50_us", "p50 us"),
                              ("floor_us", "floor us"), ("gbps", "weights GB/s"), ("of_floor", "of floor"),
                              "tiles"])
    out = common.results_dir("moe", device)
    summary = [{"name": f"moe/{r['variant']}/{r['dtype']}/n{r['tokens']}", "value": r["p50_us"], "unit": "us",
                "floor_us": r["floor_us"], "copy_gbps": bw, "matmul_tflops": tflops}
               for r in rows if r["status"] == "ok"]
    common.write_results(out, "moe", rows, summary, command=common.command_line("moe"),
                         device=common.device_name(device))
    if opts.plot:
        ok = [r for r in rows if r["status"] == "ok"]
        series = {v: ([r["tokens"] for r in ok if r["variant"] == v], [r["p50_us"] for r in ok if r["variant"] == v])
                  for v in variants}
        series["floor (weights read / copy bw, or flops)"] = (tokens, [r["floor_us"] for r in rows[::len(variants)]])
        common.plot_panels(out / "moe.png", [{"title": f"MoE layer H{opts.hidden} I{opts.inter} E{opts.experts} "
                                              f"top{opts.top_k}", "series": series, "xlabel": "tokens",
                                              "ylabel": "us (p50)", "logx": True, "logy": True}])
    print(f"wrote {out / 'moe.json'}")
    common.exit_on_failures("bench.moe", failures)
    return 0


def main(argv: list[str]) -> int:
    """The binary: flags -> Options -> run."""
    del argv
    return run(common.options_from_flags(Options))


if __name__ == "__main__":
    sys.exit(app.run(main))
