"""All-reduce profile: NCCL from 1 KiB to 1 GiB (eager and CUDA-graphed), decode sizes, and the
custom one-shot / two-shot all-reduce over peer buffers (kernels/custom_allreduce.py).

    python3 -m bench.allreduce                    # GPU: --world GPUs (default 2), spawned here
    torchrun --nproc_per_node 2 -m bench.allreduce   # the same ranks, started by torchrun
    bazel run //bench:allreduce -- --device cpu   # CPU: gloo over 2 processes, small sizes (harness check)

Per size (bf16): time per all-reduce (p50 of CUDA events on rank 0, after a barrier), algbw =
bytes / time and busbw = algbw * 2 (n - 1) / n (nccl-tests' formula: the traffic a ring
all-reduce puts on each link, comparable across n). `graph` variants replay a CUDA graph of
REPS all-reduces (the host launch leaves the figure; divided by REPS). Decode sizes are rows x
4096 bf16 (rows 1..64): the two all-reduces per layer of a TP decode step of Llama-3-8B.
The ceiling: p2p_read, this rank copying a peer's 256 MiB buffer over NVLink (measured here).

torch_symm_one_shot_graph is PyTorch's own one-shot kernel over symmetric memory (the best
alternative installed; skipped with its reason when this torch lacks it).

Every variant is checked before it is timed: inputs are small integers (distinct per rank, so
a rank that read its own copy twice is caught) whose sums bf16 holds exactly; each rank
computes the expected sum from all ranks' seeds and every output must equal it exactly; the
checker itself is shown a wrong answer (x + x) first and must reject it. A wrong variant is
WRONG and never timed; the run then exits 1 after writing its results.
NVLink multicast stays off (model.parallel.NO_MULTICAST, set before any communicator).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from absl import app

from bench import common

_define = common.define_flag
_define("string", "device", "auto", "cuda (one GPU per rank, NCCL), cpu (gloo) or auto.")
_define("integer", "world", 2, "Ranks to spawn (default 2: the lab's 2-GPU machine). Ignored under torchrun.")
_define("string", "min_size", None, "Smallest message, e.g. 1K (default 1K).")
_define("string", "max_size", None, "Largest message, e.g. 1G (default 1G on a GPU, 1M on a CPU).")
_define("integer", "size_step", 4, "Each size is the last times this (default 4: 11 sizes from 1K to 1G).")
_define("list", "decode_rows", ["1", "2", "4", "8", "16", "32", "64"], "Rows x 4096 bf16 of the decode sizes.")
_define("integer", "hidden", 4096, "Row width of the decode sizes (default 4096, Llama-3-8B's).")
_define("integer", "custom_max_bytes", 8 << 20, "Largest message the custom all-reduce is timed at (8 MiB).")
_define("integer", "warmup", None, "Untimed calls per variant (default 10 on a GPU, 2 on a CPU).")
_define("integer", "iters", None, "Timed calls per variant (default 50 on a GPU, 10 on a CPU).")

REPS = 8  # all-reduces per captured graph (the figure is per all-reduce); even, so alternate calls alternate
HIDDEN_DTYPE = torch.bfloat16
# Nominal H200/H100 NVLink 4: 18 links x 25 GB/s per direction (NVIDIA's 900 GB/s bidirectional).
NVLINK_NOMINAL_GBPS = 450.0


@dataclass(frozen=True)
class Options:
    device: str
    world: int
    min_size: str | None
    max_size: str | None
    size_step: int
    decode_rows: tuple[str, ...]
    hidden: int
    custom_max_bytes: int
    warmup: int | None
    iters: int | None


def parse_size(text: str) -> int:
    """'8K', '1M', '1G' or a byte count -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").rstrip("I")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise ValueError(f"bad size {text!r}; expected e.g. 1K, 8M, 1G or a byte count") from None


def sweep_sizes(lo: int, hi: int, step: int) -> list[int]:
    """lo, lo*step, ... up to hi (bytes)."""
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s *= step
    return sizes


def bus_bandwidth(algbw: float, world: int) -> float:
    """nccl-tests' busbw of an all-reduce: algbw * 2 (n - 1) / n."""
    return algbw * 2 * (world - 1) / world


def rank_input(rank: int, numel: int, device, call: int = 0) -> torch.Tensor:
    """Rank `rank`'s input: integers in [-8, 8] from seed (rank, call), exact in bf16 and in sums."""
    g = torch.Generator(device=device).manual_seed(1000 * call + rank)
    return torch.randint(-8, 9, (numel,), generator=g, device=device).to(HIDDEN_DTYPE)


def check_exact(fn: Callable[[torch.Tensor], torch.Tensor], ctx, numel: int) -> str:
    """'ok' when fn(this rank's input) equals the exact sum of every rank's input, else WRONG: ..."""
    from parity.tolerance import Tol, compare

    x = rank_input(ctx.rank, numel, ctx.device, call=1)
    want = sum(rank_input(r, numel, ctx.device, call=1).float() for r in range(ctx.world))
    tol = Tol(atol=1e-3, rtol=0.0)  # integer sums are exact; 1e-3 only keeps the bound non-zero
    assert not compare((x + x).float(), want, tol).ok or ctx.world == 1, "the checker accepted x + x"
    got = fn(x.clone())
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    res = compare(got.float(), want, tol, "all-reduce")
    return "ok" if res.ok else f"WRONG: {res}"


def _time(fn: Callable[[], Any], ctx, graph: bool, warmup: int, iters: int, reps: int) -> float:
    """p50 microseconds per call of fn (graph: REPS calls captured in one graph) on this rank."""
    import torch.distributed as dist

    dist.barrier()
    if ctx.device.type != "cuda":
        return common.time_cpu(fn, warmup, iters)["p50"]
    if graph:
        t = common.time_cuda_graph(lambda: [fn() for _ in range(reps)], warmup, iters, flush_l2=False,
                                   device=ctx.device)
        return t["p50"] / reps
    return common.time_cuda(fn, warmup, iters, flush_l2=False, device=ctx.device)["p50"]


def _variants(ctx, numel: int, custom, custom_max: int) -> dict[str, tuple[Callable, bool]]:
    """name -> (fn(x) -> summed tensor, graphed) for one message size."""
    import torch.distributed as dist

    def nccl(x):
        dist.all_reduce(x)
        return x

    out = {ctx.backend: (nccl, False)}
    if ctx.device.type == "cuda":
        out[f"{ctx.backend}_graph"] = (nccl, True)
        if custom is not None and numel * 2 <= custom_max:
            safe, alt = custom
            out["one_shot"] = (safe.one_shot, False)
            out["one_shot_graph"] = (safe.one_shot, True)
            out["one_shot_alt_graph"] = (alt.one_shot, True)  # REPS is even: the calls alternate
            if numel % ctx.world == 0:
                out["two_shot_graph"] = (safe.two_shot, True)
            torch_one_shot = _torch_one_shot(ctx, numel)
            if torch_one_shot is not None:  # the best alternative installed: torch's fused one-shot kernel
                out["torch_symm_one_shot_graph"] = (torch_one_shot, True)
    return out


_TORCH_ONE_SHOT_SKIP: list[str] = []  # why torch's one-shot was left out (once per run, on stdout)


def _torch_one_shot(ctx, numel: int):
    """fn(x) -> torch.ops.symm_mem.one_shot_all_reduce over a symmetric buffer of numel (x copied in),
    or None when this torch lacks it (the reason is printed once and the variant is skipped)."""
    if _TORCH_ONE_SHOT_SKIP:
        return None
    try:
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        op = torch.ops.symm_mem.one_shot_all_reduce
        buf = symm_mem.empty(numel, dtype=HIDDEN_DTYPE, device=ctx.device)
        name = dist.group.WORLD.group_name
        symm_mem.rendezvous(buf, name)
    except Exception as e:  # noqa: BLE001 - an optional alternative: skipped, with its reason
        _TORCH_ONE_SHOT_SKIP.append(f"{type(e).__name__}: {e}")
        print(f"torch symm_mem one_shot_all_reduce skipped: {_TORCH_ONE_SHOT_SKIP[0][:200]}", flush=True)
        return None

    def fn(x):
        buf.copy_(x)
        return op(buf, "sum", name)

    return fn


def rank_main(ctx, opts: Options, sizes: list[int], decode: list[int], warmup: int, iters: int) -> dict:
    """One rank: check and time every variant at every size; rank 0's figures are the ones kept."""
    from kernels import custom_allreduce

    custom, custom_status = None, "skipped: needs CUDA and torch symmetric memory"
    if ctx.device.type == "cuda" and custom_allreduce.available():
        try:
            custom = (custom_allreduce.PeerAllReduce(None, opts.custom_max_bytes, ctx.device),
                      custom_allreduce.PeerAllReduce(None, opts.custom_max_bytes, ctx.device, alternate=True))
            custom_status = "ok"
        except Exception as e:  # noqa: BLE001 - reported as FAILED, NCCL is still measured
            custom_status = common.failure_status(e)
    rows = []
    cases = [("sweep", s // 2, None) for s in sizes] + [("decode", r * opts.hidden, r) for r in decode]
    for kind, numel, nrows in cases:
        # Timed input: zeros (the in-place NCCL variants sum into it call after call; checked inputs are separate).
        x = torch.zeros(numel, dtype=HIDDEN_DTYPE, device=ctx.device)
        for name, (fn, graph) in _variants(ctx, numel, custom, opts.custom_max_bytes).items():
            row = {"kind": kind, "bytes": numel * 2, "rows": nrows, "variant": name, "world": ctx.world}
            try:
                status = check_exact(fn, ctx, numel)
                us = _time(lambda: fn(x), ctx, graph, warmup, iters, REPS) if status == "ok" else None
            except Exception as e:  # noqa: BLE001 - one variant failing is a row, not a crash
                status, us = common.failure_status(e), None
            if name.startswith("torch_") and status.startswith("FAILED"):  # torch's kernel, not ours: shown, not fatal
                status = "skipped: torch's op raised: " + status
            row["status"] = status
            if us is not None:
                algbw = numel * 2 / (us * 1e-6) / 1e9
                row.update(time_us=us, algbw_gbps=algbw, busbw_gbps=bus_bandwidth(algbw, ctx.world))
            rows.append(row)
    ceiling = None
    if custom is not None:
        try:
            ceiling = p2p_read_gbps(ctx)
        except Exception as e:  # noqa: BLE001 - the ceiling is context; its absence is said, not fatal
            print(f"rank {ctx.rank}: p2p read ceiling not measured: {common.failure_status(e)}", flush=True)
    return {"rows": rows, "custom": custom_status, "p2p_read_gbps": ceiling}


def p2p_read_gbps(ctx, nbytes: int = 256 << 20) -> float:
    """GB/s of this rank copying its neighbour's buffer (symmetric memory over NVLink) into local memory."""
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem

    buf = symm_mem.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    handle = symm_mem.rendezvous(buf, dist.group.WORLD.group_name)
    peer = handle.get_buffer((ctx.rank + 1) % ctx.world, (nbytes,), torch.uint8)
    local = torch.empty(nbytes, dtype=torch.uint8, device=ctx.device)
    dist.barrier()
    us = common.time_cuda(lambda: local.copy_(peer), 3, 10, flush_l2=False, device=ctx.device)["p50"]
    dist.barrier()
    return nbytes / (us * 1e-6) / 1e9


def run(opts: Options) -> tuple[list[dict], dict]:
    """Start the ranks (or be one, under torchrun); rank 0's rows and its extra figures."""
    from model.parallel import init_from_env, run_ranks, under_torchrun

    device = common.resolve_device(opts.device)
    cpu = not common.is_cuda(device)
    lo = parse_size(opts.min_size or "1K")
    hi = parse_size(opts.max_size or ("1M" if cpu else "1G"))
    sizes = sweep_sizes(lo, hi, opts.size_step)
    decode = [int(r) for r in opts.decode_rows]
    warmup = opts.warmup if opts.warmup is not None else (2 if cpu else 10)
    iters = opts.iters if opts.iters is not None else (10 if cpu else 50)
    args = (opts, sizes, decode, warmup, iters)
    if under_torchrun():
        import torch.distributed as dist

        ctx = init_from_env("cpu" if cpu else "cuda")
        try:
            out = rank_main(ctx, *args)
        finally:
            dist.destroy_process_group()
        if not ctx.is_driver:
            sys.exit(0)
    else:
        out = run_ranks(rank_main, opts.world, args=args, device="cpu" if cpu else "cuda")[0]
    return out["rows"], out


def main(argv: list[str]) -> int:
    del argv
    opts = common.options_from_flags(Options)
    from model.parallel import RankError

    try:
        rows, extra = run(opts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RankError as e:  # too few GPUs, or a rank that died: its first line
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    device = common.resolve_device(opts.device)
    world = rows[0]["world"] if rows else opts.world
    print(f"all-reduce over {world} ranks ({'NCCL' if common.is_cuda(device) else 'gloo'}); custom: {extra['custom']}; "
          f"p2p read ceiling: {common.fmt(extra['p2p_read_gbps'])} GB/s (nominal NVLink {NVLINK_NOMINAL_GBPS} GB/s)")
    common.print_table(rows, ["kind", "bytes", "rows", "variant", "status", ("time_us", "us"),
                              ("algbw_gbps", "algbw GB/s"), ("busbw_gbps", "busbw GB/s")])
    out_dir = common.results_dir("allreduce", device)
    summary = []
    for r in rows:
        if "time_us" in r:
            tag = f"{r['kind']}_{r['variant']}_{r['bytes']}B"
            summary.append({"name": f"allreduce_{tag}_us", "value": r["time_us"], "unit": "us"})
            if r["kind"] == "sweep":
                summary.append({"name": f"allreduce_{tag}_busbw", "value": r["busbw_gbps"], "unit": "GB/s"})
    if extra["p2p_read_gbps"] is not None:
        summary.append({"name": "allreduce_p2p_read_ceiling", "value": extra["p2p_read_gbps"], "unit": "GB/s"})
    paths = common.write_results(out_dir, "allreduce", rows, summary)
    variants = sorted({r["variant"] for r in rows})

    def series(kind, key, x="bytes"):
        return {v: ([r[x] for r in rows if r["kind"] == kind and r["variant"] == v],
                    [r.get(key) for r in rows if r["kind"] == kind and r["variant"] == v]) for v in variants}

    hl = {f"p2p read {extra['p2p_read_gbps']:.0f} GB/s": extra["p2p_read_gbps"]} if extra["p2p_read_gbps"] else {}
    common.plot_panels(out_dir / "allreduce.png", [
        {"title": "busbw vs message size", "series": series("sweep", "busbw_gbps"), "xlabel": "bytes",
         "ylabel": "GB/s", "logx": True, "hlines": hl},
        {"title": "time per all-reduce", "series": series("sweep", "time_us"), "xlabel": "bytes", "ylabel": "us",
         "logx": True, "logy": True},
        {"title": f"decode sizes (rows x {opts.hidden} bf16)", "series": series("decode", "time_us", "rows"),
         "xlabel": "rows", "ylabel": "us", "logx": True},
    ], title=f"all-reduce, {world} ranks, {common.device_name(device)}")
    print(f"results: {paths['csv'].parent}")
    failures = [f"{r['kind']} {r['variant']} {r['bytes']}B: {r['status']}" for r in rows
                if common.is_failure(r["status"])]
    if extra["custom"] != "ok" and common.is_failure(extra["custom"]):
        failures.append(f"custom all-reduce setup: {extra['custom']}")
    common.exit_on_failures("allreduce", failures)
    return 0


if __name__ == "__main__":
    app.run(main)
