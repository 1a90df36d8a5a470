"""AOTInductor packages of the prefill and decode steps, and a greedy runner over them.

Two programs, both KVCacheStep (export/kv_step.py) with the caches as inputs/outputs,
so the two compiled artifacts share one cache that the runner owns:
  prefill.pt2  ids (1, T) for 2 <= T <= max_len (T is dynamic: one compile for every prompt)
  decode.pt2   ids (1, 1)
Each is torch.export'ed, then torch._inductor.aoti_compile_and_package'd (C++ and a
shared library on CPU, CUDA kernels on a GPU: the example inputs live on the model's
device, so the package targets it; compile time is reported separately from run time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import torch

from export.kv_step import KVCacheStep, empty_caches, greedy_with_step


def export_programs(model, max_len: int) -> dict:
    """torch.export the prefill (dynamic T) and decode (T = 1) steps on the model's device and dtype."""
    model.setup_caches(1, max_len)
    step = KVCacheStep(model).eval()
    k, v = empty_caches(model, 1, max_len)  # on the weights' device, in their dtype
    dev = k.device
    T = torch.export.Dim("T", min=2, max=max_len)
    pre_args = (torch.zeros(1, 4, dtype=torch.long, device=dev), torch.arange(4, device=dev), k, v)
    dec_args = (torch.zeros(1, 1, dtype=torch.long, device=dev), torch.tensor([4], device=dev), k, v)
    with torch.no_grad():
        prefill = torch.export.export(step, pre_args, dynamic_shapes=({1: T}, {0: T}, None, None))
        decode = torch.export.export(step, dec_args)
    return {"prefill": prefill, "decode": decode}


def compile_packages(model, out_dir: str, max_len: int) -> dict:
    """Write out_dir/{prefill,decode}.pt2; return {name: path} plus per-stage seconds."""
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    programs = export_programs(model, max_len)
    times = {"export_s": time.perf_counter() - t0}
    paths = {}
    for name, ep in programs.items():
        t0 = time.perf_counter()
        paths[name] = torch._inductor.aoti_compile_and_package(
            ep, package_path=os.path.join(out_dir, f"{name}.pt2"))
        times[f"compile_{name}_s"] = time.perf_counter() - t0
    return {"paths": paths, "times": times}


PACKAGES = ("prefill", "decode")
# What the child of probe_load runs: load every package named on its command line.
PROBE_CODE = "import sys, torch\nfor path in sys.argv[1:]:\n    torch._inductor.aoti_load_package(path)"


def probe_load(out_dir: str, timeout_s: float = 600.0) -> Optional[str]:
    """Load out_dir's packages once in a child process: None if that worked, else one line saying why.

    Why a child: on the lab's H200 (torch 2.11+cu130) aoti_load_package of a CUDA package
    segfaults, whatever the model; in-process that kills the caller (a whole benchmark run).
    A negative return code is the signal that ended the child.
    """
    paths = [os.path.join(out_dir, f"{name}.pt2") for name in PACKAGES]
    try:
        done = subprocess.run([sys.executable, "-c", PROBE_CODE, *paths], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"aoti_load_package did not return within {timeout_s:g} s in a child process"
    if done.returncode < 0:
        sig = -done.returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown signal"
        return f"aoti_load_package crashed ({name}, signal {sig}) in a child process"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"aoti_load_package failed in a child process (exit {done.returncode}): {last}"
    return None


class AOTIRunner:
    """Greedy generation over the two packages; owns the KV cache tensors."""

    def __init__(self, out_dir: str):
        self.prefill = torch._inductor.aoti_load_package(os.path.join(out_dir, "prefill.pt2"))
        self.decode = torch._inductor.aoti_load_package(os.path.join(out_dir, "decode.pt2"))

    def step(self, ids, pos, k, v):
        """One call of the prefill (T > 1) or decode (T = 1) package: (logits, k, v)."""
        fn = self.prefill if ids.shape[1] > 1 else self.decode
        return fn(ids, pos, k, v)

    def generate(self, model_config, prompt: list[int], n_new: int, max_len: int,
                 dtype=torch.float32, device="cpu"):
        """Greedy ids and per-step last logits; prompt + n_new must fit max_len; device: the packages'."""
        shape = (model_config.n_layers, 1, model_config.n_kv_heads, max_len, model_config.head_dim)
        k = torch.zeros(shape, dtype=dtype, device=device)
        return greedy_with_step(self.step, prompt, n_new, k, torch.zeros_like(k), device=device)
