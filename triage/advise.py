"""`tools/bazel run //triage:advise -- --summary summary.json | --trace TRACE.json`: launch-, memory- or
compute-bound, against the measured roofline, with suggestions.

--summary (a bench results summary.json): the ceilings are the run's own measurements
(`*/copy_bandwidth` GB/s, `*/matmul_ceiling TFLOP/s`). Each GB/s record is placed against the copy
bandwidth and each TFLOP/s record against the matmul ceiling:
  memory-bound   >= 60% of the copy bandwidth: at the roof; only fewer bytes help
  compute-bound  >= 50% of the matmul ceiling
  launch-bound   its CUDA-graph twin (" graph GB/s") is >= 1.5x faster (measured), or it reaches
                 < 10% of the roof while the same op at a larger size (M, B, L) is >= 10x faster
                 per byte: a fixed per-call cost dominates at this size
  below-roof     none of these: the kernel itself leaves bandwidth or FLOPs unused
--trace (a Chrome trace from torch.profiler): GPU kernels by total time; GPU busy fraction (union of
kernel intervals over the span) and mean kernel time: busy < 50% with a mean under 10 us is
launch-bound; kernel names place each hot op as likely compute (GEMM, attention) or memory
(elementwise, norms, copies, reductions).
Suggestions come from rules per class, plus advice that worked before on a profile of the same
class (reports in the triage database with a "worked" outcome). The advice is stored as a report;
`--report_id N --outcome "worked: ..."` records what happened.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

MEMORY_ROOF = 0.60
COMPUTE_ROOF = 0.50
GRAPH_GAIN = 1.5
SMALL = 0.10
SIZE_GAIN = 10.0
LAUNCH_MEAN_US = 10.0
BUSY = 0.50

SUGGEST = {
    "launch-bound": ["capture the step in a CUDA graph (decoding/cuda_graph.capture_graph; torch.compile "
                     "mode='reduce-overhead')", "fuse neighbouring small ops (fused add+RMSNorm, fused qkv)",
                     "batch more work per launch (more requests per step)"],
    "memory-bound": ["move fewer bytes: fuse the op with its producer/consumer", "quantize weights or KV cache "
                     "(INT8/FP8 halves the bytes)", "batch more tokens per weight read"],
    "compute-bound": ["lower precision on tensor cores (bf16 -> fp8, W8A8)", "keep shapes multiples of 64/128 for "
                      "full tiles", "torch.compile mode='max-autotune' for the GEMMs"],
    "below-roof": ["tune the kernel: block sizes, num_warps, vectorized 16-byte loads (autotune per shape)",
                   "compare with the best alternative in the same run (torch.compile, vendor kernel)"],
}
_SIZE = re.compile(r"M\d+x\d+|L=\d+,B=\d+|B=\d+|bs\d+")
_COMPUTE = re.compile(r"gemm|gemv|matmul|cutlass|xmma|wgmma|sm\d\d_|_mm_|mm_|flash|attention|sdpa|fmha", re.I)
_MEMORY = re.compile(r"elementwise|vectorized|reduce|norm|copy|memcpy|memset|cat|index|softmax|silu|gelu|add|mul|"
                     r"triton_poi|triton_red|fill|rope", re.I)


class AdviseError(Exception):
    """An input that is not a summary.json or a Chrome trace."""


def _ceiling(records: list[dict], suffix: str, unit: str) -> Optional[float]:
    vals = [r["value"] for r in records if r.get("unit") == unit and r["name"].endswith(suffix)
            and isinstance(r.get("value"), (int, float))]
    return max(vals) if vals else None


def from_summary(records: list[dict]) -> dict:
    """Classify every GB/s and TFLOP/s record of a summary.json against its measured ceilings."""
    bw = _ceiling(records, "copy_bandwidth", "GB/s") or _ceiling(records, "copy_bandwidth GB/s", "GB/s")
    mm = _ceiling(records, "matmul_ceiling TFLOP/s", "TFLOP/s") or _ceiling(records, "matmul_ceiling", "TFLOP/s")
    if bw is None and mm is None:
        raise AdviseError("no measured ceiling (a */copy_bandwidth GB/s or */matmul_ceiling TFLOP/s record)")
    by_name = {r["name"]: r for r in records}
    rows = []
    for r in records:
        name, unit, value = r["name"], r.get("unit"), r.get("value")
        if not isinstance(value, (int, float)) or "copy_bandwidth" in name or "matmul_ceiling" in name:
            continue
        if unit == "GB/s" and bw and not name.endswith(" graph GB/s"):
            rows.append({"name": name, "value": value, "unit": unit, "roof": bw, "fraction": value / bw})
        elif unit == "TFLOP/s" and mm:
            rows.append({"name": name, "value": value, "unit": unit, "roof": mm, "fraction": value / mm})
    best_at_size: dict[str, float] = defaultdict(float)
    for row in rows:
        best_at_size[_SIZE.sub("*", row["name"])] = max(best_at_size[_SIZE.sub("*", row["name"])], row["fraction"])
    for row in rows:
        graph = by_name.get(row["name"].replace(" GB/s", " graph GB/s")) if row["name"].endswith(" GB/s") else None
        roof = MEMORY_ROOF if row["unit"] == "GB/s" else COMPUTE_ROOF
        if row["fraction"] >= roof:
            row["class"] = "memory-bound" if row["unit"] == "GB/s" else "compute-bound"
            row["why"] = f"{row['fraction']:.0%} of the measured {'copy bandwidth' if row['unit'] == 'GB/s' else 'matmul ceiling'}"
        elif graph and graph["value"] >= GRAPH_GAIN * row["value"]:
            row["class"] = "launch-bound"
            row["why"] = f"its CUDA-graph run is {graph['value'] / row['value']:.1f}x faster (measured)"
        elif row["fraction"] < SMALL and best_at_size[_SIZE.sub("*", row["name"])] >= SIZE_GAIN * row["fraction"]:
            row["class"] = "launch-bound"
            row["why"] = (f"{row['fraction']:.2%} of the roof here, {best_at_size[_SIZE.sub('*', row['name'])]:.0%} "
                          "at a larger size: a fixed per-call cost dominates")
        else:
            row["class"] = "below-roof"
            row["why"] = f"{row['fraction']:.0%} of the roof, and not a launch-size effect"
    counts = defaultdict(int)
    for row in rows:
        counts[row["class"]] += 1
    overall = max(counts, key=counts.get) if counts else "unknown"
    return {"kind": "summary", "ceilings": {"copy_bandwidth_GBps": bw, "matmul_TFLOPs": mm}, "rows": rows,
            "counts": dict(counts), "overall": overall}


def from_trace(trace: dict, top: int = 15) -> dict:
    """Classify a torch.profiler Chrome trace's GPU kernels."""
    events = trace.get("traceEvents") if isinstance(trace, dict) else trace
    if not isinstance(events, list):
        raise AdviseError("no traceEvents list")
    kernels = [e for e in events if isinstance(e, dict) and e.get("ph") == "X"
               and str(e.get("cat", "")).lower() in ("kernel", "gpu_memcpy", "gpu_memset")
               and isinstance(e.get("dur"), (int, float))]
    if not kernels:
        raise AdviseError("no GPU kernel events (cat 'kernel'): profile with ProfilerActivity.CUDA")
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels)
    busy, cur_s, cur_e = 0.0, *spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = spans[-1][1] - spans[0][0]
    agg: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        agg[e["name"]].append(float(e["dur"]))
    total = sum(sum(v) for v in agg.values())
    rows = []
    for name, durs in sorted(agg.items(), key=lambda kv: -sum(kv[1]))[:top]:
        mean = sum(durs) / len(durs)
        kind = "compute" if _COMPUTE.search(name) else ("memory" if _MEMORY.search(name) else "other")
        cls = "launch-bound" if mean < LAUNCH_MEAN_US else {"compute": "compute-bound", "memory": "memory-bound"}.get(
            kind, "below-roof")
        rows.append({"name": name[:120], "calls": len(durs), "total_us": sum(durs), "mean_us": mean,
                     "share": sum(durs) / total, "class": cls,
                     "why": f"mean {mean:.1f} us" + (f", a {kind} kernel by name" if kind != "other" else "")})
    mean_all = total / len(kernels)
    busy_frac = busy / span if span > 0 else 1.0
    if busy_frac < BUSY and mean_all < LAUNCH_MEAN_US:
        overall = "launch-bound"
    else:
        weight = defaultdict(float)
        for r in rows:
            weight[r["class"]] += r["share"]
        overall = max(weight, key=weight.get)
    return {"kind": "trace", "gpu_busy_fraction": busy_frac, "mean_kernel_us": mean_all, "kernels": len(kernels),
            "rows": rows, "overall": overall}


def advice(result: dict, past: list[dict]) -> list[str]:
    """Rule suggestions for the overall class, then what worked before on a profile of that class."""
    out = list(SUGGEST.get(result["overall"], []))
    for rep in past:
        body = rep["body"]
        if body.get("overall") == result["overall"]:
            out.append(f"worked before (report {rep['id']}): {rep['outcome']}")
    return out


def main(argv=None) -> int:
    """Parse flags; classify, suggest, store; or record an outcome."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--summary", help="a bench results summary.json")
    g.add_argument("--trace", help="a torch.profiler Chrome trace (JSON)")
    g.add_argument("--report_id", type=int, help="with --outcome: what happened after advice N")
    p.add_argument("--outcome", help='"worked: ..." or "did not work: ..."')
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--db")
    a = p.parse_args(argv)
    from triage.cli import db_url, user_path
    from triage.store import StoreError, open_store

    try:
        store = open_store(db_url(a.db))
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.report_id is not None:
        if not a.outcome:
            print("error: --report_id needs --outcome", file=sys.stderr)
            return 2
        if not store.set_report_outcome(a.report_id, a.outcome):
            print(f"error: --report_id {a.report_id}: no such report", file=sys.stderr)
            return 2
        print(f"report {a.report_id}: {a.outcome}")
        return 0
    flag, path = ("--summary", a.summary) if a.summary else ("--trace", a.trace)
    path = user_path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        result = from_summary(data) if a.summary else from_trace(data, a.top)
    except OSError as e:
        print(f"error: {flag} {path}: cannot read ({e.strerror})", file=sys.stderr)
        return 2
    except (ValueError, AdviseError, KeyError, TypeError) as e:
        print(f"error: {flag} {path}: {e}", file=sys.stderr)
        return 2
    rows = sorted(result["rows"], key=lambda r: r.get("fraction", -r.get("share", 0)))[:a.top] \
        if a.summary else result["rows"]
    for r in rows:
        fig = (f"{r['value']:.4g} {r['unit']} ({r['fraction']:.1%})" if a.summary else
               f"{r['calls']} calls, {r['total_us']:.0f} us ({r['share']:.0%})")
        print(f"{r['class']:<14} {r['name'][:70]:<70} {fig}  {r['why']}")
    if a.trace:
        print(f"GPU busy {result['gpu_busy_fraction']:.0%}, mean kernel {result['mean_kernel_us']:.1f} us over "
              f"{result['kernels']} kernels")
    else:
        print(f"ceilings (measured in this run): {result['ceilings']}; classes: {result['counts']}")
    tips = advice(result, store.reports_with_outcome("advice", "worked"))
    print(f"overall: {result['overall']}")
    for t in tips:
        print(f"  - {t}")
    rid = store.add_report("advice", {"source": str(path), "overall": result["overall"], "advice": tips,
                                      "rows": rows})
    print(f"advice stored as report {rid}; afterwards: advise --report_id {rid} --outcome \"worked: ...\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
