"""Host <-> device copies: pageable vs pinned bandwidth by size, and copy/compute overlap.

Question: how fast do bytes cross the host link, how much does pinning buy, and
can a copy hide behind compute on another CUDA stream?

  python3 -m bench.host_copy                  # 64 KiB .. 1 GiB, x4 steps
  bazel run //bench:host_copy -- --max_bytes=268435456

Transfers are timed by the wall clock around `copy_` plus a device synchronize
(what a caller waits for, launch and staging included): a pageable copy goes
through the driver's pinned staging buffer on the host, which CUDA events on the
stream do not see. Every copy is checked byte for byte before it is timed. The
roofline is the PCIe link reported by nvidia-smi (per direction, after 128b/130b
encoding), when it is available.

Overlap: a pinned host-to-device copy of --overlap_bytes and a chain of bf16
matmuls sized to take about as long, timed alone, back to back on one stream,
and on two streams at once. Overlap efficiency = (serial - overlapped) /
(serial - max(copy, compute)): 100% when the shorter one is hidden completely,
0% when the streams ran one after the other anyway.
"""

from __future__ import annotations

import torch
from absl import app, flags

from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "min_bytes", 64 << 10, "Smallest copy, bytes. 64 KiB: launch and synchronize overhead dominate there."
)
flags.DEFINE_integer(
    "max_bytes", 1 << 30, "Largest copy, bytes. 1 GiB: PCIe bandwidth is flat long before that."
)
flags.DEFINE_integer("step", 4, "Factor between successive sizes (x4 gives 8 sizes from 64 KiB to 1 GiB).")
flags.DEFINE_integer("warmup", 3, "Untimed copies per case, count. 3 lets the driver set up its staging buffers.")
flags.DEFINE_integer("iters", 20, "Timed copies per case, count. 20 gives stable p10/p90 and keeps a run under a minute.")
flags.DEFINE_integer(
    "overlap_bytes", 256 << 20, "Copy size of the overlap test, bytes. 256 MiB: milliseconds long, so launch costs vanish."
)
flags.DEFINE_integer("matmul_n", 4096, "Square bf16 matmul size of the overlap compute. 4096: ~0.2 ms on an H100, fine-grained.")
flags.DEFINE_boolean("plot", True, "Write host_copy.png (bandwidth and latency vs size).")

# Usable GB/s per lane per direction of PCIe generation N (after line encoding).
PCIE_GBPS_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


def copy_sizes(min_bytes: int, max_bytes: int, step: int) -> list[int]:
    """min_bytes, min_bytes*step, ... up to max_bytes (always included)."""
    if min_bytes <= 0 or max_bytes < min_bytes or step < 2:
        raise ValueError(f"bad sizes: min {min_bytes}, max {max_bytes}, step {step}")
    sizes = []
    n = min_bytes
    while n < max_bytes:
        sizes.append(n)
        n *= step
    sizes.append(max_bytes)
    return sizes


def overlap_efficiency(parts_us: list[float], serial_us: float, overlapped_us: float) -> float:
    """Share (0..1, may stray a little outside) of the possible saving that overlap achieved.

    The possible saving is serial - max(parts): overlapped running as long as its
    longest part is perfect (1.0); as long as serial is none (0.0).
    """
    possible = serial_us - max(parts_us)
    if possible <= 0:
        return float("nan")
    return (serial_us - overlapped_us) / possible


def human_bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def pcie_roofline_gbps() -> tuple[float | None, str]:
    """Per-direction PCIe bandwidth of GPU 0 (GB/s) and its label, or (None, reason)."""
    out = common._run(
        ["nvidia-smi", "--query-gpu=pcie.link.gen.max,pcie.link.width.max", "--format=csv,noheader,nounits"]
    )
    try:
        gen, width = (int(v) for v in out.splitlines()[0].split(","))
        return PCIE_GBPS_PER_LANE[gen] * width, f"PCIe Gen{gen} x{width}"
    except (AttributeError, ValueError, KeyError, IndexError):
        return None, "PCIe link unknown (nvidia-smi)"


def _sync() -> None:
    torch.cuda.synchronize()


def measure_transfers(sizes: list[int], warmup: int, iters: int) -> list[dict]:
    """One row per (direction, host memory, size): bandwidth from the p50 wall time."""
    n_max = max(sizes)
    dev = torch.device("cuda")
    # The bytes every copy moves: random, made on the device, mirrored on the host.
    dev_ref = torch.randint(0, 256, (n_max,), dtype=torch.uint8, device=dev)
    host_src = {"pageable": dev_ref.cpu(), "pinned": torch.empty(n_max, dtype=torch.uint8, pin_memory=True)}
    host_src["pinned"].copy_(host_src["pageable"])
    host_dst = {"pageable": torch.empty(n_max, dtype=torch.uint8), "pinned": torch.empty(n_max, dtype=torch.uint8, pin_memory=True)}
    dev_dst = torch.empty(n_max, dtype=torch.uint8, device=dev)

    rows = []
    for n in sizes:
        for direction in ("h2d", "d2h"):
            for memory in ("pageable", "pinned"):
                pinned = memory == "pinned"
                if direction == "h2d":
                    dst, src = dev_dst[:n], host_src[memory][:n]
                    want = dev_ref[:n]
                else:
                    dst, src = host_dst[memory][:n], dev_ref[:n]
                    want = host_src["pageable"][:n]

                def copy(dst=dst, src=src, pinned=pinned):
                    dst.copy_(src, non_blocking=pinned)

                dst.zero_()
                copy()
                _sync()
                if not torch.equal(dst, want):
                    bad = int((dst != want).sum())
                    raise AssertionError(f"WRONG: {direction} {memory} {human_bytes(n)}: {bad} bytes differ")
                t = common.time_cpu(copy, warmup=warmup, iters=iters, sync=_sync)
                rows.append(
                    {
                        "direction": direction,
                        "memory": memory,
                        "bytes": n,
                        "size": human_bytes(n),
                        "p10_us": t["p10"],
                        "p50_us": t["p50"],
                        "p90_us": t["p90"],
                        "gbps": n / (t["p50"] * 1e-6) / 1e9,
                    }
                )
    return rows


def measure_overlap(nbytes: int, matmul_n: int, warmup: int, iters: int) -> tuple[list[dict], dict]:
    """Copy alone, compute alone, serialized and overlapped; rows plus the efficiencies."""
    dev = torch.device("cuda")
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev)
    h2d_src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    h2d_src.copy_(src)
    h2d_dst = torch.empty_like(src)
    d2h_dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    a = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16) / matmul_n**0.25
    b = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16) / matmul_n**0.25
    c = torch.empty(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    c_ref = a.float() @ b.float()
    s_h2d, s_d2h, s_mm = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()

    def h2d():
        h2d_dst.copy_(h2d_src, non_blocking=True)

    def d2h():
        d2h_dst.copy_(src, non_blocking=True)

    # Size the compute to the copy: k matmuls take about as long as one h2d.
    mm_us = common.time_cuda(lambda: torch.mm(a, b, out=c), warmup=3, iters=10, flush_l2=False)["p50"]
    copy_us = common.time_cpu(h2d, warmup=2, iters=5, sync=_sync)["p50"]
    k = max(1, round(copy_us / mm_us))

    def compute():
        for _ in range(k):
            torch.mm(a, b, out=c)

    def on(stream, fn):
        with torch.cuda.stream(stream):
            fn()

    cases = {
        "h2d copy alone": h2d,
        "d2h copy alone": d2h,
        f"compute alone ({k} x mm {matmul_n})": compute,
        "h2d + compute, one stream": lambda: (h2d(), compute()),
        "h2d || compute, two streams": lambda: (on(s_h2d, h2d), on(s_mm, compute)),
        "h2d || d2h || compute, three streams": lambda: (on(s_h2d, h2d), on(s_d2h, d2h), on(s_mm, compute)),
    }
    times = {}
    for name, fn in cases.items():
        h2d_dst.zero_()
        d2h_dst.zero_()
        c.zero_()
        fn()
        _sync()
        # Check what this case produced before timing it.
        if "h2d" in name and not torch.equal(h2d_dst, src):
            raise AssertionError(f"WRONG: overlap case {name!r}: h2d copy bytes differ")
        if "d2h" in name and not torch.equal(d2h_dst, h2d_src):
            raise AssertionError(f"WRONG: overlap case {name!r}: d2h copy bytes differ")
        if "compute" in name:
            common.check_close(c, c_ref, what=f"overlap case {name!r}: matmul")
        times[name] = common.time_cpu(fn, warmup=warmup, iters=iters, sync=_sync)

    names = list(cases)
    t_h2d, t_d2h, t_mm = (times[n]["p50"] for n in names[:3])
    eff = {
        "h2d || compute": overlap_efficiency([t_h2d, t_mm], t_h2d + t_mm, times[names[4]]["p50"]),
        "h2d || d2h || compute": overlap_efficiency(
            [t_h2d, t_d2h, t_mm], t_h2d + t_d2h + t_mm, times[names[5]]["p50"]
        ),
    }
    ideal = {names[3]: t_h2d + t_mm, names[4]: max(t_h2d, t_mm), names[5]: max(t_h2d, t_d2h, t_mm)}
    rows = []
    for name in names:
        t = times[name]
        row = {"case": name, "p10_us": t["p10"], "p50_us": t["p50"], "p90_us": t["p90"], "ideal_us": ideal.get(name)}
        if name == names[4]:
            row["overlap_eff_pct"] = 100 * eff["h2d || compute"]
        if name == names[5]:
            row["overlap_eff_pct"] = 100 * eff["h2d || d2h || compute"]
        rows.append(row)
    return rows, eff


def main(argv: list[str]) -> int:
    del argv
    if not common.has_cuda():
        print(f"host_copy needs a CUDA GPU; none on {common.device_name()}. Nothing measured.")
        return 0
    device = common.device_name()
    out_dir = common.results_dir("host_copy")
    sizes = copy_sizes(FLAGS.min_bytes, FLAGS.max_bytes, FLAGS.step)
    roof, roof_label = pcie_roofline_gbps()
    print(f"host_copy on {device}, {common.today()}; roofline: {roof_label}" + (f" = {roof:.1f} GB/s per direction" if roof else ""))

    rows = measure_transfers(sizes, FLAGS.warmup, FLAGS.iters)
    for row in rows:
        row["pct_of_link"] = 100 * row["gbps"] / roof if roof else None
    common.print_table(
        rows,
        ["direction", "memory", "size", ("p50_us", "p50 us"), ("p10_us", "p10 us"), ("p90_us", "p90 us"),
         ("gbps", "GB/s"), ("pct_of_link", "% link")],
        title="\nHost <-> device copies (wall time incl. synchronize; GB/s from p50)",
    )

    overlap_rows, eff = measure_overlap(FLAGS.overlap_bytes, FLAGS.matmul_n, FLAGS.warmup, FLAGS.iters)
    common.print_table(
        overlap_rows,
        ["case", ("p50_us", "p50 us"), ("p10_us", "p10 us"), ("p90_us", "p90 us"), ("ideal_us", "ideal us"),
         ("overlap_eff_pct", "overlap %")],
        title=f"\nCopy/compute overlap ({human_bytes(FLAGS.overlap_bytes)} pinned copies)",
    )

    summary = []
    for direction in ("h2d", "d2h"):
        for memory in ("pageable", "pinned"):
            best = max((r for r in rows if r["direction"] == direction and r["memory"] == memory), key=lambda r: r["gbps"])
            summary.append(
                {"name": f"host_copy/{direction}_{memory}_peak", "value": best["gbps"], "unit": "GB/s",
                 "bytes": best["bytes"], "roofline": roof_label, "roofline_gbps": roof}
            )
    for name, value in eff.items():
        key = name.replace(" || ", "_").replace(" ", "_")
        summary.append({"name": f"host_copy/overlap_{key}", "value": 100 * value, "unit": "%",
                        "bytes": FLAGS.overlap_bytes})
    all_rows = [{"table": "transfer", **r} for r in rows] + [{"table": "overlap", **r} for r in overlap_rows]
    paths = common.write_results(out_dir, "host_copy", all_rows, summary)

    if FLAGS.plot:
        series = {}
        latency = {}
        for direction in ("h2d", "d2h"):
            for memory in ("pageable", "pinned"):
                sel = [r for r in rows if r["direction"] == direction and r["memory"] == memory]
                series[f"{direction} {memory}"] = ([r["bytes"] for r in sel], [r["gbps"] for r in sel])
                latency[f"{direction} {memory}"] = ([r["bytes"] for r in sel], [r["p50_us"] for r in sel])
        panels = [
            {"title": "bandwidth (p50)", "xlabel": "bytes", "ylabel": "GB/s", "logx": True, "series": series,
             "hlines": {roof_label: roof} if roof else {}},
            {"title": "latency (p50)", "xlabel": "bytes", "ylabel": "us", "logx": True, "logy": True, "series": latency},
        ]
        paths["png"] = common.plot_panels(out_dir / "host_copy.png", panels, title=f"host_copy: {device}, {common.today()}")
    print(f"\nresults: {out_dir}  ({', '.join(p.name for p in paths.values())})")
    return 0


if __name__ == "__main__":
    app.run(main)
