"""Loads every bench/results/*/summary.json and draws the cross-run comparisons of notebooks/results.ipynb.

A summary.json is the list of records bench.common writes (`name`, `value`,
`unit`, `device`, `date`, `command`, `versions`, plus per-benchmark fields).
Each record is tagged with `run`, the results folder it came from (device and
date). The plots compare runs side by side; a comparison with no records says
so instead of drawing an empty axis.
"""

import json
import math
import pathlib
import re

import matplotlib.pyplot as plt

REQUIRED = ("name", "value", "unit", "device", "date")


def find_results_dir(start=None):
    """bench/results of the repository that holds `start` (default: the working directory)."""
    here = pathlib.Path(start or pathlib.Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "bench" / "results").is_dir():
            return d / "bench" / "results"
    raise FileNotFoundError(f"no bench/results folder at or above {here}; pass the results folder explicitly")


def load_summaries(results_dir):
    """Every record of every `results_dir/*/summary.json`, each tagged with its `run` folder name.

    A file that is not a JSON list of records, or a record missing one of
    REQUIRED, raises ValueError naming the file (a results folder is data we
    publish: a broken one should be fixed, not skipped).
    """
    results_dir = pathlib.Path(results_dir)
    paths = sorted(results_dir.glob("*/summary.json"))
    if not paths:
        raise FileNotFoundError(f"no */summary.json under {results_dir}")
    records = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records, got {type(data).__name__}")
        for i, rec in enumerate(data):
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise ValueError(f"{path}: record {i} lacks {missing}")
            records.append({**rec, "run": path.parent.name})
    return records


def runs(records):
    """The run folders in order of (date, name)."""
    return sorted({r["run"] for r in records}, key=lambda run: (min(r["date"] for r in records if r["run"] == run), run))


def numeric(value):
    """Whether a record value is a finite number (skips status strings, NaN and inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def select(records, prefix, unit=None, contains=None):
    """Records whose name starts with `prefix` (and has `unit`, and contains `contains`), numeric values only."""
    return [r for r in records if r["name"].startswith(prefix) and (unit is None or r["unit"] == unit)
            and (contains is None or contains in r["name"]) and numeric(r["value"])]


def table(rows, columns):
    """A plain-text table of dicts (what the notebook prints beside each plot)."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _grouped_bars(ax, groups, series, values, ylabel):
    """Bars: one cluster per group, one bar per series; values[(group, series)] may be missing."""
    width = 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        xs = [i + j * width for i, g in enumerate(groups) if (g, s) in values]
        ys = [values[(g, s)] for g in groups if (g, s) in values]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def show(fig):
    """Displays `fig` as the cell's output once (then closes it, so the inline backend does not repeat it)."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def _empty(title, why):
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: {why}", ha="center", va="center")
    return fig


def kernels_pct_of_copy(records):
    """Best % of copy bandwidth per kernel op and implementation, one bar per run. Returns (fig, rows)."""
    best = {}
    for r in select(records, "kernels/", "GB/s"):
        parts = r["name"].split("/")
        if len(parts) < 5 or "pct_of_copy" not in r or not numeric(r["pct_of_copy"]):
            continue
        key = (f"{parts[1]}/{parts[-1]}", r["run"])
        best[key] = max(best.get(key, 0.0), 100.0 * r["pct_of_copy"])
    if not best:
        return _empty("kernels", "no kernels/* records with pct_of_copy"), []
    groups = sorted({g for g, _ in best})
    fig, ax = plt.subplots(figsize=(9, 4))
    _grouped_bars(ax, groups, runs(records), best, "best % of copy bandwidth")
    ax.set_title("Kernels: achieved bandwidth as % of a device copy (higher is better)")
    fig.tight_layout()
    return fig, [{"op/impl": g, "run": s, "pct_of_copy": v} for (g, s), v in sorted(best.items())]


def attention_vs_cudnn(records):
    """Attention TFLOP/s per variant and sequence length, against SDPA's cuDNN backend. Returns (fig, rows)."""
    recs = [r for r in select(records, "flash_attention/", "TFLOP/s") if re.search(r"/S=\d+ TFLOP/s$", r["name"])]
    if not recs:
        return _empty("attention", "no flash_attention/*/S=* TFLOP/s records"), []
    def key(r):  # flash_attention/<variant>/<mask>/S=<len> TFLOP/s
        parts = r["name"].split("/")
        return parts[1], parts[2], int(r["name"].split("S=")[1].split()[0])

    cudnn = {(r["run"], *key(r)[1:]): r["value"] for r in recs if key(r)[0] == "sdpa_cudnn"}
    rows = []
    fig, ax = plt.subplots(figsize=(9, 4))
    for run in runs(recs):
        for variant in sorted({key(r)[0] for r in recs if r["run"] == run}):
            pts = sorted((key(r)[2], key(r)[1], r["value"]) for r in recs if r["run"] == run and key(r)[0] == variant)
            causal = [(s, v) for s, mask, v in pts if mask == "causal"]
            if causal:
                ax.plot([p[0] for p in causal], [p[1] for p in causal], marker="o", label=f"{variant} ({run})")
            for s, mask, v in pts:
                ref = cudnn.get((run, mask, s))
                rows.append({"run": run, "variant": variant, "mask": mask, "S": s, "TFLOP/s": v,
                             "x cuDNN": (v / ref) if ref else ""})
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length S (causal)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title("Attention prefill: TFLOP/s by variant; sdpa_cudnn is the best installed alternative")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig, rows


def decode_vs_roofline(records, batch="bs1"):
    """Decode tok/s per variant at `batch`, one bar per run, with each run's bandwidth roofline. Returns (fig, rows).

    The roofline tok/s is derived from the run's own records: best-of-ours tok/s
    divided by its `best_ours/<batch>/pct_roofline` (bench.decode states the
    roofline as weight bytes per token over the measured copy bandwidth).
    """
    values, rows, roofline = {}, [], {}
    for r in select(records, "decode/", "tok/s"):
        parts = r["name"].split("/")  # decode/<model>/<variant>/<batch>/tok_s
        if len(parts) == 5 and parts[3] == batch and parts[4] == "tok_s":
            values[(f"{parts[2]}", f"{r['run']} {parts[1]}")] = r["value"]
            rows.append({"run": r["run"], "model": parts[1], "variant": parts[2], "tok/s": r["value"]})
    if not values:
        return _empty("decode", f"no decode/*/{batch}/tok_s records"), []
    for r in select(records, "decode/", "%"):
        parts = r["name"].split("/")
        if len(parts) == 5 and parts[2] == "best_ours" and parts[3] == batch and parts[4] == "pct_roofline":
            best = values.get((r.get("variant", ""), f"{r['run']} {parts[1]}"))
            if best and r["value"] > 0:
                roofline[f"{r['run']} {parts[1]}"] = best / (r["value"] / 100.0)
                rows.append({"run": r["run"], "model": parts[1], "variant": "roofline (derived)",
                             "tok/s": roofline[f"{r['run']} {parts[1]}"], "pct_roofline": r["value"]})
    series = sorted({s for _, s in values})
    fig, ax = plt.subplots(figsize=(9, 4))
    _grouped_bars(ax, sorted({g for g, _ in values}), series, values, "tokens/s")
    for i, s in enumerate(series):
        if s in roofline:
            ax.axhline(roofline[s], linestyle="--", color=f"C{i}", linewidth=1)
    ax.set_title(f"Decode {batch}: tok/s per variant; dashed = each run's bandwidth roofline")
    fig.tight_layout()
    return fig, rows


SERVING_METRICS = ("output tok/s", "ttft p50", "ttft p99", "tpot p50", "e2e p50")


def serving(records):
    """Serving throughput and latency per scheduling mode and run. Returns (fig, rows)."""
    recs = select(records, "serving/")
    rows = []
    for r in recs:
        mode, _, metric = r["name"].removeprefix("serving/").partition(" ")
        if metric not in SERVING_METRICS:  # "ttft p50 ms": the unit ends the name
            metric = metric.removesuffix(f" {r['unit']}")
        if metric in SERVING_METRICS:
            rows.append({"run": r["run"], "mode": mode, "metric": metric, "value": r["value"], "unit": r["unit"]})
    if not rows:
        return _empty("serving", "no serving/* throughput or latency records"), []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    thr = {(row["mode"], row["run"]): row["value"] for row in rows if row["metric"] == "output tok/s"}
    lat = {(row["mode"], row["run"]): row["value"] for row in rows if row["metric"] == "ttft p50"}
    _grouped_bars(axes[0], sorted({g for g, _ in thr}), runs(records), thr, "output tok/s")
    axes[0].set_title("Serving throughput (higher is better)")
    _grouped_bars(axes[1], sorted({g for g, _ in lat}), runs(records), lat, "TTFT p50 (ms)")
    axes[1].set_title("Time to first token p50 (lower is better)")
    fig.tight_layout()
    return fig, rows


def quant_quality_vs_bytes(records):
    """Quantization quality against weight bytes (records quant/* with a `bytes` field). Returns (fig, rows)."""
    recs = [r for r in select(records, "quant/") if numeric(r.get("bytes"))]
    if not recs:
        return _empty("quantization", "no quant/* records with a bytes field in any summary.json yet"), []
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs(recs):
        pts = [r for r in recs if r["run"] == run]
        ax.scatter([r["bytes"] / 2**20 for r in pts], [r["value"] for r in pts], label=run)
        for r in pts:
            ax.annotate(r["name"].split("/")[1], (r["bytes"] / 2**20, r["value"]), fontsize=7)
    ax.set_xlabel("weight MiB")
    ax.set_ylabel(f"quality ({recs[0]['unit']})")
    ax.set_title("Quantization: quality against bytes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, [{"run": r["run"], "name": r["name"], "value": r["value"], "bytes": r["bytes"]} for r in recs]
