"""Whether Triton kernels can run for a tensor (GPU, or CPU under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def can_run(t: torch.Tensor) -> bool:
    """True if a Triton kernel can take `t`: CUDA tensors, or CPU tensors when interpreting."""
    return HAVE_TRITON and (t.is_cuda or (interpreting() and t.device.type == "cpu"))


def run_device():
    """Where Triton kernels run on this machine: "cuda", "cpu" under TRITON_INTERPRET=1, else None."""
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if HAVE_TRITON and interpreting() else None


def tune_bench(kernel_call, quantiles=None):
    """The autotuners' timer: Triton's do_bench with 5 ms of warm-up and 20 ms of repeats.

    Triton's defaults (25 + 100 ms a config) made each new autotune key of an 18-config kernel a
    ~2 s stall in the middle of serving (H200 trace, 2026-11-29: one 1.9 s engine step)."""
    import triton.testing

    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def launch_tuned(tuner, cache: dict, key: tuple, grid, args: tuple, consts: dict) -> None:
    """Launch an autotuned kernel: through `tuner` (a triton.autotune wrapper) the first time `key`
    is seen, then the plain kernel with the config it picked, kept in `cache` by key.

    The autotuner's own dispatch costs ~40 us of host time per call (H200, Triton 3.6), paid by
    every layer of an eager engine step. `grid` is a tuple or a function of the config's kwargs."""
    meta = cache.get(key)
    if meta is None:
        tuner[grid](*args, **consts)
        cache[key] = tuner.best_config.all_kwargs()
        return
    tuner.fn[grid(meta) if callable(grid) else grid](*args, **consts, **meta)
