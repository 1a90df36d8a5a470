"""Shared helpers of the benchmark binaries: where results go, how we time, what we record.

Timing (`time_fn`): each iteration optionally runs an untimed `before()` (reset
in-place inputs), then writes a 256 MB buffer to evict the GPU L2 (H100 L2 is 50
MB) so every iteration reads its inputs from HBM, then times one call of `fn`.
On CUDA the call sits between two CUDA events: the flush (~85 us on an H100) keeps
the GPU busy while the host queues the call, so the figure is device time, not
launch latency, for any call the host can queue within that time; a call with
more host work than that (eager PyTorch's chain of small kernels at decode sizes,
a guard-heavy compiled wrapper) shows its host cost too, as it would in a model
without CUDA graphs. On CPU
it is `time.perf_counter` around the call (plus an optional `sync`). We report
percentiles (p10/p50/p90) in microseconds, never a single number.

Results: `results_dir()` is `bench/results/<device-slug>-<YYYY-MM-DD>/`, shared by
every benchmark run on that device and day (or `$LAB_RESULTS_DIR`). Each benchmark
writes `<name>.csv`, `<name>.json` and merges its records into `summary.json`
(keyed by record name), each record carrying device, date, command and versions.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import torch

from model import device as lab_device

# Bytes written between timed iterations to evict the L2 cache. H100's L2 is 50 MB,
# H200's the same; 256 MB is five times that, so nothing of the last call survives.
L2_FLUSH_BYTES = 256 << 20
# On CPU a last-level cache is at most a few hundred MB on big servers; 64 MB keeps
# CPU runs quick while still evicting a laptop's LLC.
CPU_FLUSH_BYTES = 64 << 20

# Relative tolerance of a low-precision result against an fp32 reference. bf16 has
# 8 mantissa bits (rounding alone is 2^-9 = 0.002, two roundings plus reduction order
# stay under 1e-2); fp16 has 11; fp32 differs only in summation order.
DEFAULT_RTOL = {
    torch.bfloat16: 1e-2,
    torch.float16: 5e-3,
    torch.float32: 1e-5,
}

_REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_root() -> Path:
    """The workspace root: `bazel run` gives it in BUILD_WORKSPACE_DIRECTORY."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    return Path(workspace) if workspace else _REPO_ROOT


def has_cuda() -> bool:
    return torch.cuda.is_available()


def default_device() -> str:
    """cuda when a GPU is visible, else cpu: --device auto (model.device.resolve_device)."""
    return resolve_device(None)


def resolve_device(name: str | None) -> str:
    """--device (cpu, cuda, cuda:N; None, '' or auto: cuda when visible) as a string, through
    model.device.resolve_device: UsageError (a ValueError) naming --device if bad."""
    return str(lab_device.resolve_device(name))


def device_and_dtype(device_flag: str | None, dtype_flag: str | None) -> tuple[str, torch.dtype]:
    """--device and --dtype of a benchmark (dtype None or auto: bf16 on a GPU, fp32 on a CPU), or
    absl's UsageError naming the bad flag."""
    from absl import app

    try:
        device = resolve_device(device_flag)
        return device, lab_device.resolve_dtype(dtype_flag, device)
    except ValueError as e:  # model.device.UsageError
        raise app.UsageError(str(e)) from None


def is_cuda(device: str | torch.device) -> bool:
    """Whether a device string or torch.device names a GPU."""
    return torch.device(device).type == "cuda"


def parse_dtype(name: str) -> torch.dtype:
    """--dtype (bf16, fp16, fp32, float32, ...) through model.device's table; UsageError (a ValueError) if bad."""
    return lab_device.parse_dtype(name)


def dtype_name(dtype: torch.dtype) -> str:
    """The short name results print: bf16, fp16, fp32."""
    return lab_device.dtype_name(dtype, short=True)


# ----------------------------------------------------------------------------
# Device, versions, where results go
# ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str | torch.device | None = None) -> str:
    """Marketing name of the device: "NVIDIA H100 80GB HBM3", or "cpu-<model>"."""
    device = torch.device(device or default_device())
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{_cpu_model()}"


def device_slug(name: str | None = None) -> str:
    """Folder-safe short name: "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"; any CPU -> "cpu"."""
    name = name if name is not None else device_name()
    if name.lower().startswith("cpu"):
        return "cpu"
    slug = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.IGNORECASE).lower()
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-") or "unknown"


def today() -> str:
    return datetime.date.today().isoformat()


def results_dir(command_name: str, device: str | torch.device | None = None) -> Path:
    """The results folder of this device and day, created.

    `bench/results/<device-slug>-<YYYY-MM-DD>/` under the workspace; `$LAB_RESULTS_DIR`
    replaces it (the GPU runner points it at its output folder). All benchmarks of
    one device and day share it, so `summary.json` there collects every figure;
    `command_name` ("kernels") only has to be a plain name, the files it writes
    are prefixed with it.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", command_name):
        raise ValueError(f"command_name must be a plain file name, got {command_name!r}")
    override = os.environ.get("LAB_RESULTS_DIR")
    if override:
        path = Path(override)
    else:
        path = repo_root() / "bench" / "results" / f"{device_slug(device_name(device))}-{today()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(command_name: str, argv: Sequence[str] | None = None, package: str = "bench") -> str:
    """How to rerun this binary: `bazel run //bench:x -- ...` or `python3 -m bench.x ...` (or `package`'s)."""
    args = list(sys.argv[1:] if argv is None else argv)
    tail = (" " + shlex.join(args)) if args else ""
    if os.environ.get("BUILD_WORKSPACE_DIRECTORY"):
        return f"bazel run //{package}:{command_name}" + (" --" + tail if args else "")
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # the module `python3 -m` ran
    module = spec.name if spec is not None and spec.name.startswith(package + ".") else f"{package}.{command_name}"
    return f"python3 -m {module}" + tail


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _module_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except Exception:  # noqa: BLE001 - a broken optional package is "absent" here
        return None
    return getattr(module, "__version__", "unknown")


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, Any]:
    """Library and machine versions that a figure depends on (absent ones are None)."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _module_version("triton"),
        "transformers": _module_version("transformers"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
    }
    if has_cuda():
        out["gpu"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        out["gpu_sms"] = props.multi_processor_count
        out["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    root = repo_root()
    rev = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root)
    if rev:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
        rev += "-dirty" if dirty else ""
    out["git"] = rev
    return out


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_us(times_us: Sequence[float]) -> dict[str, float]:
    """p10/p50/p90 (plus mean, min, max and the count) of times in microseconds."""
    return {
        "p10": percentile(times_us, 10),
        "p50": percentile(times_us, 50),
        "p90": percentile(times_us, 90),
        "mean": sum(times_us) / len(times_us),
        "min": min(times_us),
        "max": max(times_us),
        "iters": len(times_us),
    }


@functools.lru_cache(maxsize=None)
def _flush_buffer(device: str) -> torch.Tensor:
    nbytes = L2_FLUSH_BYTES if is_cuda(device) else CPU_FLUSH_BYTES
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def flush_cache(device: str | torch.device) -> None:
    """Write a buffer several times the size of the last-level cache on `device`."""
    _flush_buffer(str(torch.device(device))).zero_()


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on a CPU), so wall-clock timings are real."""
    if is_cuda(device):
        torch.cuda.synchronize()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters, each shared tensor (a tied lm_head) counted once."""
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in unique.values())


def time_cuda(
    fn: Callable[[], Any],
    warmup: int = 10,
    iters: int = 50,
    flush_l2: bool = True,
    before: Callable[[], Any] | None = None,
    device: str | torch.device = "cuda",
) -> dict[str, float]:
    """Device time of `fn()` in microseconds (p10/p50/p90...) from CUDA events.

    Per iteration: `before()` (untimed, e.g. restore an input `fn` modifies in place),
    then the L2 flush (untimed, so `before`'s traffic is evicted too), then
    event, `fn()`, event. All events are read after one final synchronize.
    """
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends):
            if before is not None:
                before()
            if flush_l2:
                flush_cache(device)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return summarize_us([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)])


def time_cuda_graph(
    fn: Callable[[], Any],
    warmup: int = 10,
    iters: int = 50,
    flush_l2: bool = True,
    device: str | torch.device = "cuda",
) -> dict[str, float]:
    """`time_cuda` of fn's kernels replayed from a CUDA graph: no host launch cost in the figure.

    What a kernel costs inside a graphed decode step (the engine's). fn is warmed up on a
    side stream first (autotuners pick their configs there), then captured once; a fn that
    cannot be captured raises (torch's capture error), and callers report it as such.
    """
    from decoding.cuda_graph import capture_graph

    graph, _ = capture_graph(fn, device)
    return time_cuda(graph.replay, warmup, iters, flush_l2=flush_l2, device=device)


def time_cpu(
    fn: Callable[[], Any],
    warmup: int = 3,
    iters: int = 20,
    flush_l2: bool = False,
    before: Callable[[], Any] | None = None,
    sync: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Wall time of `fn()` (then `sync()`, if given) in microseconds, from perf_counter.

    Same protocol as `time_cuda`; `sync` lets host-visible GPU work (a pageable copy,
    a multi-stream schedule) be timed by the wall clock with
    `sync=torch.cuda.synchronize`.
    """
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
        if sync is not None:
            sync()
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        if flush_l2:
            flush_cache("cpu")
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) * 1e6)
    return summarize_us(times)


def time_fn(
    fn: Callable[[], Any],
    device: str | torch.device,
    warmup: int = 10,
    iters: int = 50,
    flush_l2: bool = True,
    before: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """`time_cuda` on a CUDA device, else `time_cpu`; microsecond percentiles either way."""
    if is_cuda(device):
        return time_cuda(fn, warmup, iters, flush_l2=flush_l2, before=before, device=device)
    return time_cpu(fn, warmup, iters, flush_l2=flush_l2, before=before)


# ----------------------------------------------------------------------------
# Rooflines
# ----------------------------------------------------------------------------


def measure_copy_bandwidth(device: str | torch.device, nbytes: int | None = None) -> float:
    """GB/s (1e9 B/s) of one large same-device copy, counting read + write (2 * size).

    The memory-bound ceiling every bandwidth figure is compared with. 1 GiB on a GPU
    (twenty times the L2), 64 MiB on a CPU. The copy is verified before it is timed.
    """
    if nbytes is None:
        nbytes = (1 << 30) if is_cuda(device) else (64 << 20)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    if not torch.equal(dst, src):
        raise AssertionError("device copy produced different bytes")
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, iters=10, flush_l2=False)
    del src, dst
    return 2 * nbytes / (t["p50"] * 1e-6) / 1e9


def measure_matmul_tflops(device: str | torch.device, dtype: torch.dtype = torch.bfloat16, n: int | None = None) -> float:
    """TFLOP/s of an n x n x n matmul (2 n^3 flops): 8192 on a GPU, 512 on a CPU."""
    if n is None:
        n = 8192 if is_cuda(device) else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    k = min(n, 256)  # verify a corner against fp32
    check_close(torch.mm(a, b)[:k, :k], a[:k].float() @ b[:, :k].float(), what=f"matmul {n}^3 {dtype_name(dtype)}")
    t = time_fn(lambda: torch.mm(a, b, out=c), device, warmup=3, iters=10, flush_l2=False)
    return 2 * n**3 / (t["p50"] * 1e-6) / 1e12


# ----------------------------------------------------------------------------
# Correctness
# ----------------------------------------------------------------------------


def check_close(
    got: torch.Tensor,
    want: torch.Tensor,
    rtol_by_dtype: Mapping[torch.dtype, float] | None = None,
    what: str = "result",
) -> None:
    """Raise AssertionError naming `what` unless `got` matches the reference `want`.

    The tolerance comes from `got`'s dtype (`DEFAULT_RTOL` unless given): element-wise
    |got - want| <= rtol * (1 + |want|), i.e. relative for large values and absolute
    (at the same level) near zero; judged by parity.tolerance (the one per-element check),
    so NaN or Inf in `got` fails and the message names the worst element.
    """
    from parity.tolerance import Tol, assert_close

    rtol_by_dtype = DEFAULT_RTOL if rtol_by_dtype is None else rtol_by_dtype
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if got.dtype not in rtol_by_dtype:
        raise AssertionError(f"{what}: no tolerance for dtype {got.dtype}")
    rtol = rtol_by_dtype[got.dtype]
    assert_close(got, want.to(got.device), Tol(atol=rtol, rtol=rtol), f"{what} ({dtype_name(got.dtype)}, rtol={rtol:g})")


def failure_status(e: BaseException, limit: int = 400) -> str:
    """A row's status for an exception: "WRONG: ..." for a failed check (AssertionError), else
    "FAILED: <type>: ...", on one line of at most `limit` characters."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, AssertionError):
        return f"WRONG: {msg}"[:limit]
    return f"FAILED: {type(e).__name__}: {msg}"[:limit]


def is_failure(status: str) -> bool:
    """Whether a row's status says its variant ran and was WRONG or FAILED.

    "ok" rows and rows a benchmark chose not to run ("skipped: ...", "not installed") are not
    failures; everything a benchmark reports as WRONG or FAILED is, out of memory included.
    """
    return status.startswith(("WRONG", "FAILED"))


def attempted(status: str) -> bool:
    """Whether a row's variant ran (ok, WRONG or FAILED), rather than being skipped or absent."""
    return status == "ok" or is_failure(status)


def exit_on_failures(bench: str, failures: Sequence[str], inputs: Sequence[Mapping] | None = None) -> None:
    """Exit 1 with one line naming every WRONG or FAILED variant (none: return).

    Called last, after the results files are written: the figures of the variants that passed
    are kept, and a script or CI step running the benchmark still sees it fail. The line also
    goes to the failure log as one record (`export.failures.record_event`, kind "wrong") with
    each variant's inputs: `inputs` (one mapping per failure: shapes, dtypes) when the caller
    passes them, else the dtypes, `name=N` sizes and `AxB` shapes its name carries.
    """
    if failures:
        message = f"{bench}: {len(failures)} WRONG or FAILED: {', '.join(failures)}"
        from export.failures import inputs_from_text, record_event  # the one failure log (triage/ reads it)

        found = list(inputs) if inputs is not None else [inputs_from_text(f) for f in failures]
        record_event(bench, "wrong", "BenchWrong", message,
                     context={"variants": list(failures), "inputs": dict(zip(failures, found))})
        print(message, file=sys.stderr, flush=True)
        sys.exit(1)


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A table cell: blank for None, yes/no for bools, 3-4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 0.01 or a == 0:
            return f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]]) -> str:
    """Fixed-width text table; a column is a row key or (key, header)."""
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    cells = [[fmt(row.get(key)) for key, _ in cols] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (_, h) in enumerate(cols)]

    def line(values: Iterable[str]) -> str:
        # Text left, numbers right.
        parts = []
        for v, w in zip(values, widths):
            numeric = bool(re.fullmatch(r"[-+]?[\d,.]+(e[-+]\d+)?%?x?", v))
            parts.append(v.rjust(w) if numeric else v.ljust(w))
        return "  ".join(parts).rstrip()

    out = [line(h for _, h in cols), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]], title: str | None = None
) -> str:
    """Print (and return) `format_table(rows, columns)` under an optional title."""
    text = format_table(rows, columns)
    if title:
        text = f"{title}\n{text}"
    print(text, flush=True)
    return text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, torch.Size):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(
    out_dir: Path | str,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    command: str | None = None,
    device: str | None = None,
) -> dict[str, Path]:
    """Write `<name>.csv`, `<name>.json` and merge `summary` into `summary.json`.

    Each summary record needs `name`, `value` and `unit`; `device`, `date`, `command`
    and `versions` are filled in unless given. Records already in `summary.json`
    with the same name are replaced in place, others kept, new ones appended.
    Returns the paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = command or command_line(name)
    device = device or device_name()
    meta = {"device": device, "date": today(), "command": command, "versions": versions()}

    csv_path = out_dir / f"{name}.csv"
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: str(v) if isinstance(v, (torch.dtype, Path)) else v for k, v in row.items()})

    json_path = out_dir / f"{name}.json"
    _write_atomic(json_path, json.dumps({**meta, "rows": list(rows)}, indent=1, default=_json_default) + "\n")

    records = []
    for rec in summary:
        missing = [k for k in ("name", "value", "unit") if k not in rec]
        if missing:
            raise ValueError(f"summary record {rec!r} lacks {missing}")
        records.append({**meta, **rec})
    summary_path = out_dir / "summary.json"
    merged: list[dict[str, Any]] = []
    if summary_path.exists():
        old = json.loads(summary_path.read_text() or "[]")
        if not isinstance(old, list):
            raise ValueError(f"{summary_path} is not a list of records")
        merged = old
    index = {rec.get("name"): i for i, rec in enumerate(merged)}
    for rec in records:
        if rec["name"] in index:
            merged[index[rec["name"]]] = rec
        else:
            index[rec["name"]] = len(merged)
            merged.append(rec)
    _write_atomic(summary_path, json.dumps(merged, indent=1, default=_json_default) + "\n")
    return {"csv": csv_path, "json": json_path, "summary": summary_path}


def plot_panels(
    path: Path | str,
    panels: Sequence[Mapping[str, Any]],
    title: str = "",
    ncols: int = 2,
) -> Path:
    """Write a PNG of line-plot panels (matplotlib, Agg backend: no display needed).

    Each panel is a mapping with `series` ({label: (xs, ys)}), and optionally
    `title`, `xlabel`, `ylabel`, `logx`, `logy` and `hlines` ({label: y}, drawn
    dashed: the roofline). Points whose y is None are skipped.
    """
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # absl would print its font cache INFO
    import matplotlib.pyplot as plt

    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, (xs, ys) in panel.get("series", {}).items():
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
        for label, y in panel.get("hlines", {}).items():
            ax.axhline(y, linestyle="--", color="gray", linewidth=1)
            ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7, va="bottom", color="gray")
        if panel.get("logx"):
            ax.set_xscale("log", base=2)
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(True, alpha=0.3)
        if panel.get("series"):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_setup(quick: bool | None, warmup: int | None, iters: int | None, quick_cpu: dict, quick_gpu: dict,
                full: dict) -> tuple[str, bool, bool, dict, int, int]:
    """(device, cpu, quick, sizes, warmup, iters) of a kernel sweep from its --quick, --warmup, --iters.

    The default device; None picks that device's default: --quick on for a CPU (where a run
    is a smoke test of the harness), off on a GPU; warmup 2 and 10 iterations on a CPU, 10
    and 50 on a GPU (clocks settle, stable p10/p90). `sizes` is the preset the quick flag picks.
    """
    device = default_device()
    cpu = not is_cuda(device)
    quick = cpu if quick is None else quick
    sizes = (quick_cpu if cpu else quick_gpu) if quick else full
    warmup = warmup if warmup is not None else (2 if cpu else 10)
    iters = iters if iters is not None else (10 if cpu else 50)
    return device, cpu, quick, sizes, warmup, iters


def int_list(values: list[str] | None, default) -> list[int]:
    """Integers of a comma-list flag, or `default` when the flag was not given."""
    return [int(v) for v in values] if values else list(default)


# Flags several lab modules define with the same meaning (bench.*, train.*): defined once per
# process, so pytest can import the modules side by side. A module's default may differ from
# the first definer's, so each reads None/"auto" as "pick my default".
SHARED_FLAGS = ("variants", "dtype", "device", "warmup", "iters", "seed", "plot", "checkpoint", "preset",
                "n_layers", "block_size")


def define_flag(kind: str, name: str, default: Any, help_text: str, **kwargs: Any) -> None:
    """absl flags.DEFINE_<kind>, yielding to a SHARED_FLAGS flag defined before; always overridable."""
    from absl import flags

    if name in SHARED_FLAGS and name in flags.FLAGS:
        return
    kwargs["allow_override"] = True
    getattr(flags, f"DEFINE_{kind}")(name, default, help=help_text, **kwargs)


_Options = TypeVar("_Options")


def options_from_flags(cls: type[_Options]) -> _Options:
    """A binary's frozen options dataclass `cls`, each field read once from the parsed absl flag of the
    same name (list flags as tuples). Only a binary's main calls this; the work runs on the object it
    returns, and tests build `cls` directly instead of parsing flags."""
    from absl import flags

    def frozen(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    return cls(**{f.name: frozen(getattr(flags.FLAGS, f.name)) for f in dataclasses.fields(cls)})
