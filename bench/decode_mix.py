"""Paged decode attention over a serving batch of mixed lengths: the kernel before (v1) and after,
its split policies and its autotuner's candidate configs, against SDPA and the copy ceiling.

Question: how close does `kernels.flash_decode.paged_flash_decode` come to the KV-read bandwidth
on a decode batch whose sequences differ in length (a serving batch), with tight tables (an eager
engine step) and with tables padded to the CUDA graphs' width, and which split policy and config
get it there? Issue #14 asks >= 80% of the copy bandwidth at B=64, and no loss at B=1..16 or
at long contexts against the kernel before (`kernels.flash_decode_v1`, timed in the same run).

  python3 -m bench.decode_mix                          # GPU: B 1, 16, 64 mixed + long contexts
  bazel run //bench:decode_mix -- --batches=64 --splits=1,2,4 --sweep_batches=

Lengths: lognormal (median --median, shape --sigma) clipped to [--min_len, --max_len], seeded;
Llama-3-8B heads (32 query, 8 KV, D 128), bf16 on a GPU; the paged cache of --page_size-token
blocks is a shuffled pool (`kernels.attention_ref.paged_kv`). Each batch runs twice: block tables
as wide as the longest sequence ("tight") and as wide as --graph_width blocks ("graph"; the
engine's CUDA graphs pad every table to max_model_len). --long_cases adds fixed-length batches
(BxL, tight tables: bench.flash_attention's decode shapes). Variants:
  v1_auto       the kernel before this work, its heuristic (the "before" row)
  ours_auto     the kernel now, its default policy (kernels.flash_decode.split_plan) and tuned config
  ours_even     the even policy (v1's split count) on the new kernel
  ours_c<N>     balanced splits of N tokens (--split_tokens)
  ours_s<n>     n even splits (--splits)
  cfg_<...>     (batches in --sweep_batches) every autotuner candidate forced, default policy
  sdpa_padded   SDPA over the batch padded to the longest sequence with a key mask (contiguous
                K/V, the padding not charged to it)
Every variant is checked against the fp32 per-sequence reference (`paged_decode_ref`) before it
is timed; a WRONG or FAILED one makes the run exit 1 after the files are written. Timing:
CUDA-graph replay (`bench.common.time_cuda_graph`), L2 flushed before each; GB/s = K and V bytes
of the real lengths / p50; ceiling: a 1 GiB device copy in the same run (pct_copy).
On a CPU (Triton's interpreter, tiny shapes) the run only exercises the harness.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from absl import app

from bench import common

_define = common.define_flag
_define("list", "batches", None, "Decode batch sizes, sequences. Default 1,16,64 on a GPU, 3 on a CPU.")
_define("list", "splits", None, "Fixed even split counts to time beside the policies. Default 1,2,4,8 (GPU), "
        "1,2 (CPU).")
_define("list", "split_tokens", None, "Balanced split sizes to time, tokens. Default 128,256,512,1024 (GPU), 16 (CPU).")
_define("list", "sweep_batches", None, "Batches whose cases also time every autotuner candidate config "
        "(cfg_* rows). Default 64 (GPU), 3 (CPU); empty: none.")
_define("list", "long_cases", None, "Fixed-length cases BxL (tight tables, v1 / ours / SDPA only). Default "
        "1x4096,1x32768,16x8192 (GPU), none (CPU).")
_define("integer", "median", None, "Median sequence length, tokens. Default 380 (GPU; bench.serving's trace mid-run), "
        "40 (CPU).")
_define("float", "sigma", 0.6, "Lognormal shape of the lengths.")
_define("integer", "min_len", None, "Shortest sequence, tokens. Default 40 (GPU), 8 (CPU).")
_define("integer", "max_len", None, "Longest sequence, tokens. Default 1500 (GPU), 90 (CPU).")
_define("integer", "graph_width", None, "Block-table width of the padded case, blocks. Default 256 (GPU: 4,096 "
        "tokens of 16), 8 (CPU).")
_define("integer", "page_size", 16, "Tokens per KV block. 16: vLLM's default.")
_define("integer", "iters", None, "Timed replays per variant. Default 50 (GPU), 3 (CPU).")
_define("integer", "seed", 0, "Seed of the lengths and the inputs.")
_define("string", "device", None, "cuda or cpu (Triton's interpreter). Default cuda when a GPU is visible.")
_define("boolean", "plot", True, "Write decode_mix.png (GB/s against splits per case).")


@dataclass(frozen=True)
class Options:
    batches: tuple[int, ...]
    splits: tuple[int, ...]
    median: int
    sigma: float
    min_len: int
    max_len: int
    graph_width: int
    page_size: int = 16
    iters: int = 50
    seed: int = 0
    device: str = "cuda"
    plot: bool = True
    split_tokens: tuple[int, ...] = ()
    sweep_batches: tuple[int, ...] = ()
    long_cases: tuple[tuple[int, int], ...] = ()


def draw_lengths(batch: int, o: Options, seed: int) -> list[int]:
    """Seeded lognormal lengths clipped to [min_len, max_len]."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(torch.randn(batch, generator=g, dtype=torch.float64) * o.sigma + math.log(o.median))
    return [int(x) for x in raw.round().clamp(o.min_len, o.max_len)]


def make_case(lens: list[int], width: int, o: Options, dtype: torch.dtype, heads=(32, 8, 128)) -> dict[str, Any]:
    """q, a shuffled paged pool holding each sequence's K/V, tables `width` blocks wide, lengths."""
    from kernels.attention_ref import paged_kv

    Hq, Hkv, D = heads
    B, L = len(lens), max(lens)
    g = torch.Generator(device=o.device).manual_seed(o.seed + B)
    randn = lambda *s: torch.randn(*s, generator=g, device=o.device, dtype=torch.float32).to(dtype)  # noqa: E731
    k, v = randn(B, Hkv, L, D), randn(B, Hkv, L, D)
    k_pages, v_pages, table = paged_kv(k, v, o.page_size, o.seed + 1)
    wide = torch.zeros(B, width, dtype=torch.int32, device=o.device)  # padding: block 0, never read
    wide[:, :table.shape[1]] = table
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=o.device)
    mask = torch.arange(L, device=o.device)[None, :] < seq_lens[:, None]  # (B, L) keys present
    return {"q": randn(B, Hq, D), "k": k, "v": v, "k_pages": k_pages, "v_pages": v_pages, "table": wide,
            "seq_lens": seq_lens, "mask": mask[:, None, None, :]}


def _config_name(c) -> str:
    return f"cfg_n{c.kwargs['BLOCK_N']}_p{c.kwargs['PREFETCH']}_w{c.num_warps}_s{c.num_stages}"


def variants(o: Options, sweep: bool = False, long: bool = False) -> list[tuple[str, dict | None]]:
    """(name, paged_flash_decode keyword arguments) of each variant; None: v1 or SDPA."""
    from kernels.flash_decode import DECODE_CONFIGS

    out: list[tuple[str, dict | None]] = [("v1_auto", None), ("ours_auto", {})]
    if not long:
        out += [("ours_even", {"split_tokens": 0})]
        out += [(f"ours_c{n}", {"split_tokens": n}) for n in o.split_tokens]
        out += [(f"ours_s{n}", {"num_splits": n}) for n in o.splits]
    if sweep:
        out += [(_config_name(c), {"config": dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)})
                for c in DECODE_CONFIGS]
    return out + [("sdpa_padded", None)]


def _callable(name: str, kw: dict | None, c: dict) -> Callable[[], torch.Tensor]:
    from kernels import flash_decode
    from kernels.flash_decode_v1 import paged_flash_decode_v1

    args = (c["q"], c["k_pages"], c["v_pages"], c["table"], c["seq_lens"])
    if name == "v1_auto":
        return lambda: paged_flash_decode_v1(*args)
    if name == "sdpa_padded":
        return lambda: F.scaled_dot_product_attention(c["q"][:, :, None], c["k"], c["v"], attn_mask=c["mask"],
                                                      enable_gqa=True)[:, :, 0]
    fn = flash_decode.paged_flash_decode  # looked up now: tests plant faults by replacing it
    return lambda: fn(*args, **kw)


def _splits(name: str, kw: dict | None, B: int, width_tokens: int, num_sms: int, hkv: int):
    from kernels.flash_decode import split_plan
    from kernels.flash_decode_v1 import choose_num_splits as v1_splits

    if name == "v1_auto":
        return v1_splits(B, hkv, width_tokens, num_sms), 0
    if kw is None:
        return None, None
    return split_plan(B, hkv, width_tokens, num_sms, kw.get("num_splits"), kw.get("split_tokens"))


def _cases(o: Options):
    """(batch, label, lengths, table width in blocks, sweep configs?, long?) of every case."""
    for B in o.batches:
        lens = draw_lengths(B, o, o.seed + B)
        for label, width in (("tight", -(-max(lens) // o.page_size)), ("graph", o.graph_width)):
            if width * o.page_size < max(lens):
                raise ValueError(f"--graph_width {width} blocks of {o.page_size} cannot hold {max(lens)} tokens")
            yield B, label, lens, width, B in o.sweep_batches, False
    for B, L in o.long_cases:
        yield B, f"long{L}", [L] * B, -(-L // o.page_size), False, True


def run(o: Options, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str], float]:
    """Every (case, variant) row, the failures, and the copy bandwidth (GB/s)."""
    from kernels.attention_ref import paged_decode_ref
    from kernels.flash_decode import _num_sms

    cuda = common.is_cuda(o.device)
    dtype = torch.bfloat16 if cuda else torch.float16  # the kernel takes fp16/bf16 only (upcast when interpreted)
    heads = (32, 8, 128) if cuda else (4, 2, 64)
    copy_gbps = common.measure_copy_bandwidth(o.device)
    rows, failures = [], []
    for B, label, lens, width, sweep, long in _cases(o):
        kv_bytes = 2 * sum(lens) * heads[1] * heads[2] * torch.empty((), dtype=dtype).element_size()
        c = make_case(lens, width, o, dtype, heads)
        want = paged_decode_ref(c["q"].float(), c["k_pages"].float(), c["v_pages"].float(), c["table"], c["seq_lens"])
        sms = _num_sms(c["q"])
        case_rows = []
        for name, kw in variants(o, sweep, long):
            splits, chunk = _splits(name, kw, B, width * o.page_size, sms, heads[1])
            row = {"batch": B, "width": label, "table_blocks": width, "variant": name, "splits": splits,
                   "split_tokens": chunk, "mean_len": sum(lens) / B, "max_len": max(lens), "kv_bytes": kv_bytes,
                   "status": "ok"}
            try:
                fn = _callable(name, kw, c)
                common.check_close(fn(), want, {torch.bfloat16: 1e-2, torch.float16: 5e-3}, f"{name} B={B} {label}")
                t = (common.time_cuda_graph(fn, warmup=5, iters=o.iters, device=o.device) if cuda
                     else common.time_cpu(fn, warmup=1, iters=o.iters))
                row.update(p50_us=t["p50"], gbps=kv_bytes / t["p50"] / 1e3)
                row["pct_copy"] = 100 * row["gbps"] / copy_gbps
            except Exception as e:  # noqa: BLE001 - a row reports its own failure
                row["status"] = common.failure_status(e)
                failures.append(f"{name} B={B} {label}")
            case_rows.append(row)
        rows += case_rows
        ok = {r["variant"]: r for r in case_rows if r["status"] == "ok"}
        ours = [r for r in ok.values() if r["variant"] not in ("v1_auto", "sdpa_padded")]
        if ours:
            best = min(ours, key=lambda r: r["p50_us"])
            line = (f"B={B} {label} ({width} blocks, lengths mean {sum(lens) / B:.0f} max {max(lens)}): "
                    f"best {best['variant']} {best['p50_us']:.1f} us ({best['pct_copy']:.0f}% of copy)")
            for ref in ("ours_auto", "v1_auto", "sdpa_padded"):
                if ref in ok:
                    line += f"; {ref} {ok[ref]['p50_us']:.1f} us ({ok[ref]['pct_copy']:.0f}%)"
            if "ours_auto" in ok and "v1_auto" in ok:
                line += f"; auto vs v1 {ok['v1_auto']['p50_us'] / ok['ours_auto']['p50_us']:.2f}x"
            log(line)
            policies = sorted((r for r in ours if r["variant"].startswith(("ours_c", "ours_s", "ours_e"))),
                              key=lambda r: r["p50_us"])
            if policies:
                log("  policies, fastest first: "
                    + ", ".join(f"{r['variant'][5:]} {r['p50_us']:.1f}" for r in policies))
            configs = sorted((r for r in ours if r["variant"].startswith("cfg_")), key=lambda r: r["p50_us"])
            if configs:
                log("  configs (default policy), fastest 5: " + ", ".join(
                    f"{r['variant'][4:]} {r['p50_us']:.1f}" for r in configs[:5])
                    + f"; slowest {configs[-1]['variant'][4:]} {configs[-1]['p50_us']:.1f}")
    return rows, failures, copy_gbps


def _long_case(text: str) -> tuple[int, int]:
    try:
        b, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--long_cases takes BxL items such as 16x8192, got {text!r}") from None
    if b < 1 or n < 1:
        raise ValueError(f"--long_cases: batch and length must be positive, got {text!r}")
    return b, n


def options_from_flags() -> Options:
    from absl import flags

    f = flags.FLAGS
    device = common.resolve_device(f.device)
    cuda = common.is_cuda(device)
    pick = lambda v, gpu, cpu: (gpu if cuda else cpu) if v is None else v  # noqa: E731
    sweep = f.sweep_batches if f.sweep_batches is not None else (["64"] if cuda else ["3"])
    longs = f.long_cases if f.long_cases is not None else (["1x4096", "1x32768", "16x8192"] if cuda else [])
    return Options(batches=tuple(common.int_list(f.batches, (1, 16, 64) if cuda else (3,))),
                   splits=tuple(common.int_list(f.splits, (1, 2, 4, 8) if cuda else (1, 2))),
                   split_tokens=tuple(common.int_list(f.split_tokens, (128, 256, 512, 1024) if cuda else (16,))),
                   sweep_batches=tuple(int(v) for v in sweep if v),
                   long_cases=tuple(_long_case(v) for v in longs if v),
                   median=pick(f.median, 380, 40), sigma=f.sigma, min_len=pick(f.min_len, 40, 8),
                   max_len=pick(f.max_len, 1500, 90), graph_width=pick(f.graph_width, 256, 8),
                   page_size=f.page_size, iters=pick(f.iters, 50, 3), seed=f.seed, device=device, plot=f.plot)


def main(argv: list[str]) -> None:
    del argv
    try:
        o = options_from_flags()
        if not (o.batches and all(b >= 1 for b in o.batches) and all(s >= 1 for s in o.splits + o.split_tokens)):
            raise ValueError("--batches, --splits and --split_tokens must be positive integers")
        if not 1 <= o.min_len <= o.median <= o.max_len:
            raise ValueError(f"need 1 <= --min_len <= --median <= --max_len, got {o.min_len}, {o.median}, {o.max_len}")
        if not common.is_cuda(o.device):
            from kernels._triton import interpreting
            if not interpreting():
                raise ValueError("a CPU run needs TRITON_INTERPRET=1 (Triton's interpreter)")
        rows, failures, copy_gbps = run(o)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = common.results_dir("decode_mix", o.device)
    summary = [{"name": f"decode_mix/B{r['batch']} {r['width']} {r['variant']} GB/s", "value": r["gbps"],
                "unit": "GB/s"} for r in rows if r["status"] == "ok"]
    summary.append({"name": "decode_mix/copy_bandwidth GB/s", "value": copy_gbps, "unit": "GB/s"})
    paths = common.write_results(out, "decode_mix", rows, summary)
    common.print_table(rows, ["batch", "width", "variant", "splits", "split_tokens", "p50_us", "gbps", "pct_copy",
                              "status"],
                       title=f"\ndecode_mix on {common.device_name(o.device)} (copy {copy_gbps:,.0f} GB/s)")
    if o.plot:
        panels = []
        for B in o.batches:
            for label in ("tight", "graph"):
                case = [r for r in rows if r["batch"] == B and r["width"] == label and r["status"] == "ok"]
                series = {kind: ([r["splits"] for r in case if r["variant"].startswith(prefix)],
                                 [r["gbps"] for r in case if r["variant"].startswith(prefix)])
                          for kind, prefix in (("even splits", "ours_s"), ("balanced splits", "ours_c"))}
                series = {k: v for k, v in series.items() if v[0]}
                if series:
                    lines = {"copy": copy_gbps} | {r["variant"]: r["gbps"] for r in case
                                                   if r["variant"] in ("v1_auto", "ours_auto")}
                    panels.append({"title": f"B={B}, {label} tables", "xlabel": "splits", "ylabel": "GB/s",
                                   "series": series, "hlines": lines})
        if panels:
            paths["png"] = common.plot_panels(out / "decode_mix.png", panels, title="paged decode, mixed lengths")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    common.exit_on_failures("decode_mix", failures)


if __name__ == "__main__":
    app.run(main)
