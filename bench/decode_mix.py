"""Paged decode attention over a serving batch of mixed lengths: time against the number of KV splits.

Question: how many splits should `kernels.flash_decode.choose_num_splits` give a decode batch
whose sequences differ in length (a serving batch), where the longest sequences set the step?

  python3 -m bench.decode_mix                          # GPU: batches 16 and 64, splits 1..16
  bazel run //bench:decode_mix -- --batches=64 --splits=1,2,4

Lengths: lognormal (median --median, shape --sigma) clipped to [--min_len, --max_len], seeded;
Llama-3-8B heads (32 query, 8 KV, D 128), bf16 on a GPU; the paged cache of --page_size-token
blocks is a shuffled pool (`kernels.attention_ref.paged_kv`). Each batch runs twice: block tables
as wide as the longest sequence ("tight", an eager engine step) and as wide as --graph_width
blocks (the engine's CUDA graphs pad every table to max_model_len). Variants: ours with the
heuristic's splits ("auto") and with each of --splits; SDPA over the batch padded to the longest
sequence with a key mask (the alternative without a paged kernel; its K/V are contiguous and the
padding is not charged to it). Every variant is checked against the fp32 per-sequence reference
(`paged_decode_ref`) before it is timed; a WRONG or FAILED one makes the run exit 1 after the files
are written. Timing: CUDA-graph replay (`bench.common.time_cuda_graph`), L2 flushed before each;
GB/s = K and V bytes of the real lengths / p50; ceiling: a 1 GiB device copy in the same run.
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
_define("list", "batches", None, "Decode batch sizes, sequences. Default 16,64 on a GPU, 3 on a CPU.")
_define("list", "splits", None, "Fixed split counts to time beside the heuristic's. Default 1,2,3,4,6,8,12,16 "
        "(GPU), 1,2 (CPU).")
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


def variants(o: Options) -> list[tuple[str, Callable[[dict], Callable[[], torch.Tensor]]]]:
    from kernels.flash_decode import paged_flash_decode

    def ours(splits):
        return lambda c: lambda: paged_flash_decode(c["q"], c["k_pages"], c["v_pages"], c["table"], c["seq_lens"],
                                                    num_splits=splits)

    sdpa = ("sdpa_padded", lambda c: lambda: F.scaled_dot_product_attention(
        c["q"][:, :, None], c["k"], c["v"], attn_mask=c["mask"], enable_gqa=True)[:, :, 0])
    return [("ours_auto", ours(None))] + [(f"ours_s{s}", ours(s)) for s in o.splits] + [sdpa]


def run(o: Options, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str], float]:
    """Every (batch, table width, variant) row, the failures, and the copy bandwidth (GB/s)."""
    from kernels.attention_ref import paged_decode_ref
    from kernels.flash_decode import _num_sms, choose_num_splits

    cuda = common.is_cuda(o.device)
    dtype = torch.bfloat16 if cuda else torch.float16  # the kernel takes fp16/bf16 only (upcast when interpreted)
    heads = (32, 8, 128) if cuda else (4, 2, 64)
    copy_gbps = common.measure_copy_bandwidth(o.device)
    rows, failures = [], []
    runs = variants(o)
    for B in o.batches:
        lens = draw_lengths(B, o, o.seed + B)
        kv_bytes = 2 * sum(lens) * heads[1] * heads[2] * torch.empty((), dtype=dtype).element_size()
        for label, width in (("tight", -(-max(lens) // o.page_size)), ("graph", o.graph_width)):
            if width * o.page_size < max(lens):
                raise ValueError(f"--graph_width {width} blocks of {o.page_size} cannot hold {max(lens)} tokens")
            c = make_case(lens, width, o, dtype, heads)
            want = paged_decode_ref(c["q"].float(), c["k_pages"].float(), c["v_pages"].float(), c["table"],
                                    c["seq_lens"])
            auto = choose_num_splits(B, heads[1], width * o.page_size, _num_sms(c["q"]))
            for name, make in runs:
                row = {"batch": B, "width": label, "table_blocks": width, "variant": name,
                       "splits": auto if name == "ours_auto" else (int(name[6:]) if name.startswith("ours_s") else None),
                       "mean_len": sum(lens) / B, "max_len": max(lens), "kv_bytes": kv_bytes, "status": "ok"}
                fn = make(c)
                try:
                    common.check_close(fn(), want, {torch.bfloat16: 1e-2, torch.float16: 5e-3},
                                       f"{name} B={B} {label}")
                    t = (common.time_cuda_graph(fn, warmup=5, iters=o.iters, device=o.device) if cuda
                         else common.time_cpu(fn, warmup=1, iters=o.iters))
                    row.update(p50_us=t["p50"], gbps=kv_bytes / t["p50"] / 1e3)
                    row["pct_copy"] = 100 * row["gbps"] / copy_gbps
                except Exception as e:  # noqa: BLE001 - a row reports its own failure
                    row["status"] = common.failure_status(e)
                    failures.append(f"{name} B={B} {label}")
                rows.append(row)
            ok = [r for r in rows[-len(runs):] if r["status"] == "ok" and r["variant"] != "sdpa_padded"]
            if ok:
                best = min(ok, key=lambda r: r["p50_us"])
                log(f"B={B} {label} table ({width} blocks), lengths mean {sum(lens) / B:.0f} max {max(lens)}: "
                    + ", ".join(f"{r['variant'][5:]} {r['p50_us']:.1f} us" for r in ok)
                    + f"; best {best['variant'][5:]}, auto = {auto} split(s)")
    return rows, failures, copy_gbps


def options_from_flags() -> Options:
    from absl import flags

    f = flags.FLAGS
    device = common.resolve_device(f.device)
    cuda = common.is_cuda(device)
    pick = lambda v, gpu, cpu: (gpu if cuda else cpu) if v is None else v  # noqa: E731
    return Options(batches=tuple(common.int_list(f.batches, (16, 64) if cuda else (3,))),
                   splits=tuple(common.int_list(f.splits, (1, 2, 3, 4, 6, 8, 12, 16) if cuda else (1, 2))),
                   median=pick(f.median, 380, 40), sigma=f.sigma, min_len=pick(f.min_len, 40, 8),
                   max_len=pick(f.max_len, 1500, 90), graph_width=pick(f.graph_width, 256, 8),
                   page_size=f.page_size, iters=pick(f.iters, 50, 3), seed=f.seed, device=device, plot=f.plot)


def main(argv: list[str]) -> None:
    del argv
    try:
        o = options_from_flags()
        if not (o.batches and all(b >= 1 for b in o.batches) and all(s >= 1 for s in o.splits)):
            raise ValueError("--batches and --splits must be positive integers")
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
    common.print_table(rows, ["batch", "width", "variant", "splits", "p50_us", "gbps", "pct_copy", "status"],
                       title=f"\ndecode_mix on {common.device_name(o.device)} (copy {copy_gbps:,.0f} GB/s)")
    if o.plot:
        panels = []
        for B in o.batches:
            for label in ("tight", "graph"):
                pts = [r for r in rows if r["batch"] == B and r["width"] == label and r["status"] == "ok"
                       and r["variant"].startswith("ours_s")]
                if pts:
                    panels.append({"title": f"B={B}, {label} tables", "xlabel": "splits", "ylabel": "GB/s",
                                   "series": {"ours": ([r["splits"] for r in pts], [r["gbps"] for r in pts])},
                                   "hlines": {"copy": copy_gbps}})
        if panels:
            paths["png"] = common.plot_panels(out / "decode_mix.png", panels, title="paged decode, mixed lengths")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    common.exit_on_failures("decode_mix", failures)


if __name__ == "__main__":
    app.run(main)
